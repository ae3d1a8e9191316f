// sifdump loads a SIF with the reference library (github.com/sylabs/sif/v2, as packaged by
// Debian) and prints what it sees as JSON, so tests can compare it with siffs' view.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"

	"github.com/sylabs/sif/v2/pkg/sif"
)

type object struct {
	ID        uint32 `json:"id"`
	DataType  int    `json:"data_type"`
	Group     uint32 `json:"group"`
	Link      uint32 `json:"link"`
	LinkGroup bool   `json:"link_is_group"`
	Offset    int64  `json:"offset"`
	Size      int64  `json:"size"`
	Name      string `json:"name"`
	SHA256    string `json:"sha256"`
	FsType    string `json:"fs_type,omitempty"`
	PartType  string `json:"part_type,omitempty"`
	Arch      string `json:"arch,omitempty"`
	HashType  string `json:"hash_type,omitempty"`
	Entity    string `json:"entity,omitempty"`
}

type image struct {
	LaunchScript string   `json:"launch_script"`
	ID           string   `json:"id"`
	PrimaryArch  string   `json:"primary_arch"`
	Free         int64    `json:"descriptors_free"`
	Total        int64    `json:"descriptors_total"`
	DataOffset   int64    `json:"data_offset"`
	DataSize     int64    `json:"data_size"`
	Primary      uint32   `json:"primary"`
	Objects      []object `json:"objects"`
}

func main() {
	f, err := sif.LoadContainerFromPath(os.Args[1], sif.OptLoadWithFlag(os.O_RDONLY))
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
	defer f.UnloadContainer()
	out := image{
		LaunchScript: f.LaunchScript(), ID: f.ID(), PrimaryArch: f.PrimaryArch(),
		Free: f.DescriptorsFree(), Total: f.DescriptorsTotal(),
		DataOffset: f.DataOffset(), DataSize: f.DataSize(), Objects: []object{},
	}
	if d, err := f.GetDescriptor(sif.WithPartitionType(sif.PartPrimSys)); err == nil {
		out.Primary = d.ID()
	}
	var failure error
	f.WithDescriptors(func(d sif.Descriptor) bool {
		data, err := d.GetData()
		if err != nil {
			failure = err
			return true
		}
		sum := sha256.Sum256(data)
		link, isGroup := d.LinkedID()
		o := object{
			ID: d.ID(), DataType: int(d.DataType()), Group: d.GroupID(), Link: link, LinkGroup: isGroup,
			Offset: d.Offset(), Size: d.Size(), Name: d.Name(), SHA256: hex.EncodeToString(sum[:]),
		}
		if fs, pt, arch, err := d.PartitionMetadata(); err == nil {
			o.FsType, o.PartType, o.Arch = fs.String(), pt.String(), arch
		}
		if ht, fp, err := d.SignatureMetadata(); err == nil {
			o.HashType, o.Entity = ht.String(), hex.EncodeToString(fp)
		}
		out.Objects = append(out.Objects, o)
		return false
	})
	if failure != nil {
		fmt.Fprintln(os.Stderr, "read:", failure)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(out); err != nil {
		os.Exit(1)
	}
}
