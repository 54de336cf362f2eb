package ledger

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"testing"

	"pgregory.net/rapid"
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

// For any tree, and any prune point before the entry: the node store (seeded with the pruned
// prefix's compact range when there is one) gives inclusion proofs that verify against the
// root of the whole tree, and consistency proofs from any later size; a proof for another
// leaf does not verify.
func TestNodeStoreProofs(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.Int64Range(1, 300).Draw(t, "size")
		pruned := rapid.Int64Range(0, n-1).Draw(t, "pruned")
		seq := rapid.Int64Range(pruned+1, n).Draw(t, "seq")
		leaves := make([][]byte, n)
		full := rangeFactory.NewEmptyRange(0)
		prefix := rangeFactory.NewEmptyRange(0)
		for i := range leaves {
			h := sha256.Sum256([]byte(fmt.Sprint("leaf", i)))
			leaves[i] = h[:]
			if int64(i) == pruned {
				prefix = cloneRange(full)
			}
			full.Append(leaves[i], nil)
		}
		root := rootOf(full)
		st, err := newNodeStoreFrom(prefix, leaves[pruned:])
		if err != nil {
			t.Fatal(err)
		}
		if got, err := st.root(); err != nil || !bytes.Equal(got, root) {
			t.Fatalf("root = %x, %v; want %x", got, err, root)
		}
		p, err := st.inclusion(seq, n)
		if err != nil {
			t.Fatalf("inclusion(%d, %d) after pruning %d: %v", seq, n, pruned, err)
		}
		if err := VerifyInclusion(seq, n, leaves[seq-1], p, root); err != nil {
			t.Fatalf("inclusion proof of %d in %d: %v", seq, n, err)
		}
		other := leaves[(seq)%n]
		if n > 1 && VerifyInclusion(seq, n, other, p, root) == nil {
			t.Fatalf("the proof of %d verified another leaf", seq)
		}
		// Consistency from any size m >= seq (past the pruned prefix) to n.
		m := rapid.Int64Range(seq, n).Draw(t, "m")
		old := rangeFactory.NewEmptyRange(0)
		for _, l := range leaves[:m] {
			old.Append(l, nil)
		}
		cp, err := st.consistency(m, n)
		if err != nil {
			t.Fatalf("consistency(%d, %d) after pruning %d: %v", m, n, pruned, err)
		}
		if err := VerifyConsistency(m, n, cp, rootOf(old), root); err != nil {
			t.Fatalf("consistency proof %d -> %d: %v", m, n, err)
		}
	})
}
