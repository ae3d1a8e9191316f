// sifverify verifies a SIF image's PGP signatures with the reference library
// (github.com/sylabs/sif/v2/pkg/integrity, as packaged by Debian) and an armored OpenPGP key,
// so tests can check that the reference accepts what siffs signs.
//
// Usage: sifverify IMAGE KEY.asc [GROUP]   (exit 0 and one line per verified signature)
package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"strconv"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/sylabs/sif/v2/pkg/integrity"
	"github.com/sylabs/sif/v2/pkg/sif"
)

func fail(what string, err error) {
	fmt.Fprintln(os.Stderr, what+":", err)
	os.Exit(1)
}

func main() {
	f, err := sif.LoadContainerFromPath(os.Args[1], sif.OptLoadWithFlag(os.O_RDONLY))
	if err != nil {
		fail("load", err)
	}
	defer f.UnloadContainer()

	kf, err := os.Open(os.Args[2])
	if err != nil {
		fail("key", err)
	}
	kr, err := openpgp.ReadArmoredKeyRing(kf)
	if err != nil {
		fail("key", err)
	}

	opts := []integrity.VerifierOpt{
		integrity.OptVerifyWithKeyRing(kr),
		integrity.OptVerifyCallback(func(r integrity.VerifyResult) bool {
			if r.Error() != nil {
				return false
			}
			ids := []uint32{}
			for _, od := range r.Verified() {
				ids = append(ids, od.ID())
			}
			fmt.Printf("signature %d verified %v by %s\n", r.Signature().ID(), ids,
				hex.EncodeToString(r.Entity().PrimaryKey.Fingerprint))
			return false
		}),
	}
	if len(os.Args) > 3 {
		g, err := strconv.Atoi(os.Args[3])
		if err != nil {
			fail("group", err)
		}
		opts = append(opts, integrity.OptVerifyGroup(uint32(g)))
	}
	v, err := integrity.NewVerifier(f, opts...)
	if err != nil {
		fail("verifier", err)
	}
	if err := v.Verify(); err != nil {
		fail("verify", err)
	}
}
