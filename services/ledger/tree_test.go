package ledger

import (
	"bytes"
	"crypto/rand"
	"testing"
)

// The compact ranges' interior hash is RFC 6962's, as transparency-dev/merkle computes it.
func TestHashChildrenIsRFC6962(t *testing.T) {
	for range 100 {
		l, r := make([]byte, HashSize), make([]byte, HashSize)
		rand.Read(l)
		rand.Read(r)
		if !bytes.Equal(hashChildren(l, r), hasher.HashChildren(l, r)) {
			t.Fatalf("hashChildren(%x, %x) differs from rfc6962", l, r)
		}
	}
}
