// siforacle answers questions about SIF images with the reference library
// (github.com/sylabs/sif/v2 as packaged by Debian), printing JSON, so tests compute the expected
// answers live instead of reading stored ones.
//
// Usage:
//
//	siforacle dump IMAGE                       header and descriptor fields
//	siforacle verify IMAGE SPEC                one verdict (SPEC: JSON, see verifySpec)
//	siforacle flips IMAGE SPEC OFFSET...       one verdict line per single-bit flip (XOR 1)
//	siforacle sign IMAGE KEY.asc SPEC          sign in place (SPEC: JSON, see signSpec)
//	siforacle siftool header|list|info|dump ... what the reference siftool prints
package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/spf13/cobra"
	"github.com/sylabs/sif/v2/pkg/integrity"
	"github.com/sylabs/sif/v2/pkg/sif"
	"github.com/sylabs/sif/v2/pkg/siftool"
)

type object struct {
	Slot        int    `json:"slot"`
	ID          uint32 `json:"id"`
	GroupRaw    uint32 `json:"group_id_raw"`
	LinkRaw     uint32 `json:"linked_id_raw"`
	Padded      int64  `json:"size_with_padding"`
	UID         int64  `json:"uid"`
	GID         int64  `json:"gid"`
	DataType    int    `json:"data_type"`
	Group       uint32 `json:"group_id"`
	Link        uint32 `json:"link"`
	LinkIsGroup bool   `json:"link_is_group"`
	Offset      int64  `json:"offset"`
	Size        int64  `json:"size"`
	CreatedAt   int64  `json:"created_at"`
	ModifiedAt  int64  `json:"modified_at"`
	Name        string `json:"name"`
	Data        string `json:"data_sha256"`
	FsType      *int   `json:"fs_type,omitempty"`
	PartType    *int   `json:"part_type,omitempty"`
	Arch        string `json:"arch,omitempty"`
	HashType    *int32 `json:"hash_type,omitempty"`
	Entity      string `json:"fingerprint,omitempty"`
}

type header struct {
	LaunchScript      string   `json:"launch_script"`
	Version           string   `json:"version"`
	ID                string   `json:"id"`
	PrimaryArch       string   `json:"arch"`
	CreatedAt         int64    `json:"created_at"`
	ModifiedAt        int64    `json:"modified_at"`
	DescriptorsFree   int64    `json:"descriptors_free"`
	DescriptorsTotal  int64    `json:"descriptors_total"`
	DescriptorsOffset int64    `json:"descriptors_offset"`
	DescriptorsSize   int64    `json:"descriptors_size"`
	DataOffset        int64    `json:"data_offset"`
	DataSize          int64    `json:"data_size"`
	Primary           uint32   `json:"primary_partition"`
	Objects           []object `json:"descriptors"`
}

func die(what string, err error) {
	fmt.Fprintln(os.Stderr, what+":", err)
	os.Exit(1)
}

func emit(v any) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(v); err != nil {
		die("encode", err)
	}
}

// rawDescriptor mirrors the reference's on-disk descriptor (pkg/sif/descriptor.go), for the
// fields its API does not expose: slot, raw group and link words, padding, uid/gid.
type rawDescriptor struct {
	DataType        int32
	Used            bool
	ID              uint32
	GroupID         uint32
	LinkedID        uint32
	Offset          int64
	Size            int64
	SizeWithPadding int64
	CreatedAt       int64
	ModifiedAt      int64
	UID             int64
	GID             int64
	Name            [128]byte
	Extra           [384]byte
}

func rawTable(path string, f *sif.FileImage) map[uint32]struct {
	slot int
	raw  rawDescriptor
} {
	out := map[uint32]struct {
		slot int
		raw  rawDescriptor
	}{}
	fh, err := os.Open(path)
	if err != nil {
		die("open", err)
	}
	defer fh.Close() //nolint:errcheck
	if _, err := fh.Seek(f.DescriptorsOffset(), 0); err != nil {
		die("seek", err)
	}
	for slot := int64(0); slot < f.DescriptorsTotal(); slot++ {
		var rd rawDescriptor
		if err := binary.Read(fh, binary.LittleEndian, &rd); err != nil {
			die("descriptor table", err)
		}
		if rd.Used {
			out[rd.ID] = struct {
				slot int
				raw  rawDescriptor
			}{int(slot), rd}
		}
	}
	return out
}

func dump(path string) {
	f, err := sif.LoadContainerFromPath(path, sif.OptLoadWithFlag(os.O_RDONLY))
	if err != nil {
		die("load", err)
	}
	defer f.UnloadContainer() //nolint:errcheck
	out := header{
		LaunchScript: f.LaunchScript(), Version: f.Version(), ID: f.ID(), PrimaryArch: f.PrimaryArch(),
		CreatedAt: f.CreatedAt().Unix(), ModifiedAt: f.ModifiedAt().Unix(),
		DescriptorsFree: f.DescriptorsFree(), DescriptorsTotal: f.DescriptorsTotal(),
		DescriptorsOffset: f.DescriptorsOffset(), DescriptorsSize: f.DescriptorsSize(),
		DataOffset: f.DataOffset(), DataSize: f.DataSize(), Objects: []object{},
	}
	if d, err := f.GetDescriptor(sif.WithPartitionType(sif.PartPrimSys)); err == nil {
		out.Primary = d.ID()
	}
	table := rawTable(path, f)
	var failure error
	f.WithDescriptors(func(d sif.Descriptor) bool {
		data, err := d.GetData()
		if err != nil {
			failure = err
			return true
		}
		link, isGroup := d.LinkedID()
		sum := sha256.Sum256(data)
		entry := table[d.ID()]
		o := object{
			Slot: entry.slot, GroupRaw: entry.raw.GroupID, LinkRaw: entry.raw.LinkedID,
			Padded: entry.raw.SizeWithPadding, UID: entry.raw.UID, GID: entry.raw.GID,
			ID: d.ID(), DataType: int(d.DataType()), Group: d.GroupID(), Link: link, LinkIsGroup: isGroup,
			Offset: d.Offset(), Size: d.Size(), CreatedAt: d.CreatedAt().Unix(), ModifiedAt: d.ModifiedAt().Unix(),
			Name: d.Name(), Data: hex.EncodeToString(sum[:]),
		}
		if fs, pt, arch, err := d.PartitionMetadata(); err == nil {
			fsi, pti := int(fs), int(pt)
			o.FsType, o.PartType, o.Arch = &fsi, &pti, arch
		}
		if _, fp, err := d.SignatureMetadata(); err == nil {
			code := int32(binary.LittleEndian.Uint32(entry.raw.Extra[:4]))
			o.HashType, o.Entity = &code, strings.ToUpper(hex.EncodeToString(fp))
		}
		out.Objects = append(out.Objects, o)
		return false
	})
	if failure != nil {
		die("read", failure)
	}
	emit(out)
}

// verifySpec selects what to verify, as Singularity/Apptainer's verify options do.
type verifySpec struct {
	Keyrings  []string `json:"keyrings"`
	Groups    []uint32 `json:"groups"`
	Objects   []uint32 `json:"objects"`
	Legacy    bool     `json:"legacy"`
	LegacyAll bool     `json:"legacy_all"`
}

type signature struct {
	Sig         uint32   `json:"sig"`
	Verified    []uint32 `json:"verified"`
	Fingerprint string   `json:"signer_fingerprint,omitempty"`
}

type verdict struct {
	OK         bool        `json:"ok"`
	Error      string      `json:"error,omitempty"`
	Message    string      `json:"message,omitempty"`
	Signatures []signature `json:"signatures"`
}

// kinds names the reference's failures with the error kinds the tests use; several of the
// reference's errors are unexported, so their messages identify them.
var kinds = []struct {
	kind   string
	target error
	text   string
}{
	{"NoObjects", sif.ErrNoObjects, ""},
	{"MultipleObjectsFound", sif.ErrMultipleObjectsFound, ""},
	{"InvalidGroupID", sif.ErrInvalidGroupID, ""},
	{"NoKeyMaterialPGP", integrity.ErrNoKeyMaterial, ""},
	{"HeaderIntegrity", integrity.ErrHeaderIntegrity, ""},
	{"DescriptorIntegrity", &integrity.DescriptorIntegrityError{}, ""},
	{"ObjectIntegrity", &integrity.ObjectIntegrityError{}, ""},
	{"SignatureNotFound", &integrity.SignatureNotFoundError{}, ""},
	{"FingerprintMismatch", nil, "fingerprint in descriptor does not correspond"},
	{"HashUnsupported", nil, "hash algorithm unsupported"},
	{"ObjectNotSigned", nil, "object not signed"},
	{"SignedObjectNotFound", nil, "signed object not found"},
	{"SignatureFormatNotRecognized", nil, "clearsigned message not found"},
	{"SignatureNotValid", &integrity.SignatureNotValidError{}, ""},
	{"NoGroups", nil, "no groups found"},
	{"GroupNotFound", nil, "group not found"},
	{"NonGroupedObject", nil, "non-signature object not associated"},
	{"ObjectNotFound", sif.ErrObjectNotFound, ""},
}

func classify(err error) string {
	for _, k := range kinds {
		if k.target != nil && errors.Is(err, k.target) {
			return k.kind
		}
		if k.text != "" && strings.Contains(err.Error(), k.text) {
			return k.kind
		}
	}
	return "Other"
}

func readKeyrings(paths []string) openpgp.EntityList {
	var all openpgp.EntityList
	for _, path := range paths {
		kf, err := os.Open(path)
		if err != nil {
			die("keyring", err)
		}
		kr, err := openpgp.ReadArmoredKeyRing(kf)
		kf.Close() //nolint:errcheck
		if err != nil {
			die("keyring", err)
		}
		all = append(all, kr...)
	}
	return all
}

func check(load func() (*sif.FileImage, error), spec verifySpec, kr openpgp.EntityList) (v verdict) {
	v.Signatures = []signature{}
	defer func() {
		if r := recover(); r != nil {
			v = verdict{Error: "GoPanic", Message: fmt.Sprint(r), Signatures: []signature{}}
		}
	}()
	f, err := load()
	if err != nil {
		return verdict{Error: "LoadError", Message: err.Error(), Signatures: []signature{}}
	}
	defer f.UnloadContainer() //nolint:errcheck
	opts := []integrity.VerifierOpt{
		integrity.OptVerifyCallback(func(r integrity.VerifyResult) bool {
			if r.Error() != nil {
				return false
			}
			s := signature{Sig: r.Signature().ID(), Verified: []uint32{}}
			for _, od := range r.Verified() {
				s.Verified = append(s.Verified, od.ID())
			}
			if e := r.Entity(); e != nil {
				s.Fingerprint = strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint))
			}
			v.Signatures = append(v.Signatures, s)
			return false
		}),
	}
	if kr != nil {
		opts = append(opts, integrity.OptVerifyWithKeyRing(kr))
	}
	for _, g := range spec.Groups {
		opts = append(opts, integrity.OptVerifyGroup(g))
	}
	for _, o := range spec.Objects {
		opts = append(opts, integrity.OptVerifyObject(o))
	}
	if spec.Legacy {
		opts = append(opts, integrity.OptVerifyLegacy())
	}
	if spec.LegacyAll {
		opts = append(opts, integrity.OptVerifyLegacyAll())
	}
	verifier, err := integrity.NewVerifier(f, opts...)
	if err == nil {
		err = verifier.Verify()
	}
	if err != nil {
		return verdict{Error: classify(err), Message: err.Error(), Signatures: v.Signatures}
	}
	v.OK = true
	return v
}

func parseSpec(text string) verifySpec {
	var spec verifySpec
	if err := json.Unmarshal([]byte(text), &spec); err != nil {
		die("spec", err)
	}
	return spec
}

func verify(path, specText string) {
	spec := parseSpec(specText)
	kr := readKeyrings(spec.Keyrings)
	emit(check(func() (*sif.FileImage, error) {
		return sif.LoadContainerFromPath(path, sif.OptLoadWithFlag(os.O_RDONLY))
	}, spec, kr))
}

func flips(path, specText string, offsets []string) {
	spec := parseSpec(specText)
	kr := readKeyrings(spec.Keyrings)
	original, err := os.ReadFile(path)
	if err != nil {
		die("read", err)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, text := range offsets {
		at, err := strconv.Atoi(text)
		if err != nil {
			die("offset", err)
		}
		data := append([]byte(nil), original...)
		data[at] ^= 1
		// One line per offset, written at once: if the runtime dies on a hostile size,
		// the caller knows which flip killed it.
		if err := enc.Encode(check(func() (*sif.FileImage, error) {
			return sif.LoadContainer(sif.NewBuffer(data), sif.OptLoadWithFlag(os.O_RDONLY))
		}, spec, kr)); err != nil {
			die("encode", err)
		}
	}
}

// signSpec says what the reference signs: whole groups and/or subsets of objects, one
// signature per group each, at a fixed time so the image is reproducible.
type signSpec struct {
	Groups  []uint32   `json:"groups"`
	Objects [][]uint32 `json:"objects"`
}

func signImage(path, keyPath, specText string) {
	var spec signSpec
	if err := json.Unmarshal([]byte(specText), &spec); err != nil {
		die("spec", err)
	}
	kr := readKeyrings([]string{keyPath})
	f, err := sif.LoadContainerFromPath(path)
	if err != nil {
		die("load", err)
	}
	opts := []integrity.SignerOpt{
		integrity.OptSignWithEntity(kr[0]),
		integrity.OptSignWithTime(func() time.Time { return time.Unix(1700000000, 0) }),
		integrity.OptSignDeterministic(),
	}
	for _, g := range spec.Groups {
		opts = append(opts, integrity.OptSignGroup(g))
	}
	for _, ids := range spec.Objects {
		opts = append(opts, integrity.OptSignObjects(ids...))
	}
	s, err := integrity.NewSigner(f, opts...)
	if err == nil {
		err = s.Sign()
	}
	if err != nil {
		die("sign", err)
	}
	if err := f.UnloadContainer(); err != nil {
		die("unload", err)
	}
}

func main() {
	if len(os.Args) < 3 {
		die("usage", errors.New("siforacle dump|verify|flips|siftool ..."))
	}
	switch os.Args[1] {
	case "dump":
		dump(os.Args[2])
	case "verify":
		verify(os.Args[2], os.Args[3])
	case "flips":
		flips(os.Args[2], os.Args[3], os.Args[4:])
	case "sign":
		signImage(os.Args[2], os.Args[3], os.Args[4])
	case "siftool":
		root := &cobra.Command{Use: "siftool", SilenceUsage: true, SilenceErrors: true}
		if err := siftool.AddCommands(root); err != nil {
			die("siftool", err)
		}
		root.SetArgs(os.Args[2:])
		if err := root.Execute(); err != nil {
			die("siftool", err)
		}
	default:
		die("usage", fmt.Errorf("unknown command %q", os.Args[1]))
	}
}
