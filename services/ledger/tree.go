package ledger

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// The ledger is an RFC 6962 / RFC 9162 Merkle tree: leaf i (0-based) is the entry with
// seq i+1, and its leaf hash is the entry's stored hash column:
//
//   - entries appended since the tree (migration 005): hash = SHA-256(0x00 || canonical(entry)),
//     the RFC 6962 leaf hash of the canonical encoding documented at chainHash;
//   - entries of a ledger created before the tree (seq <= legacy_through): hash =
//     SHA-256(prev_hash || canonical(entry)), the old chain, still checked as a chain. Those
//     hashes are the leaves as they are: the tree over them commits to the whole legacy chain.
//
// The tree code is transparency-dev/merkle's (compact ranges, proofs, RFC 6962 hasher);
// checkpoints are C2SP tlog-checkpoint signed notes (golang.org/x/mod/sumdb/note).

var hasher = rfc6962.DefaultHasher

// rangeFactory builds compact ranges with RFC 6962 interior hashing. hashChildren is
// hasher.HashChildren without its per-call digest allocation (Verify hashes a million
// interior nodes; TestHashChildrenIsRFC6962 pins that both agree).
var rangeFactory = &compact.RangeFactory{Hash: hashChildren}

func hashChildren(l, r []byte) []byte {
	var buf [1 + 2*HashSize]byte
	buf[0] = rfc6962.RFC6962NodeHashPrefix
	copy(buf[1:], l)
	copy(buf[1+HashSize:], r)
	sum := sha256.Sum256(buf[:])
	return sum[:]
}

// emptyRoot is the root of the empty tree.
var emptyRoot = hasher.EmptyRoot()

// DefaultOrigin is the checkpoint origin (the log's name, and the note key name) unless
// Config.Origin says otherwise.
const DefaultOrigin = "tenure/ledger"

// leafHash is the RFC 6962 leaf hash of canonical(e).
func leafHash(e *entry) []byte {
	h := sha256.New()
	h.Write([]byte{rfc6962.RFC6962LeafHashPrefix})
	c := canon{h: h}
	writeCanonical(&c, e)
	return h.Sum(nil)
}

// encodeRange packs a compact range's hashes (at most 64 of 32 bytes) into one column.
func encodeRange(r *compact.Range) []byte {
	b := make([]byte, 0, len(r.Hashes())*HashSize)
	for _, h := range r.Hashes() {
		b = append(b, h...)
	}
	return b
}

// decodeRange is the compact range [0, size) from encodeRange's bytes.
func decodeRange(size int64, b []byte) (*compact.Range, error) {
	if len(b)%HashSize != 0 {
		return nil, fmt.Errorf("a compact range of %d bytes is not a list of hashes", len(b))
	}
	hs := make([][]byte, 0, len(b)/HashSize)
	for i := 0; i < len(b); i += HashSize {
		hs = append(hs, bytes.Clone(b[i:i+HashSize]))
	}
	return rangeFactory.NewRange(0, uint64(size), hs)
}

// rootOf is a compact range's root (from 0), or the empty root.
func rootOf(r *compact.Range) []byte {
	if r.End() == r.Begin() {
		return emptyRoot
	}
	h, err := r.GetRootHash(nil)
	if err != nil {
		panic(err) // only ranges starting at 0 are asked
	}
	return h
}

// cloneRange copies r (Append changes the hashes in place).
func cloneRange(r *compact.Range) *compact.Range {
	hs := make([][]byte, len(r.Hashes()))
	for i, h := range r.Hashes() {
		hs[i] = bytes.Clone(h)
	}
	c, _ := rangeFactory.NewRange(r.Begin(), r.End(), hs)
	return c
}

// TreeCheckpoint is a parsed tlog-checkpoint: the log's origin, tree size, root hash, and the
// ledger's extension line with the signing time.
type TreeCheckpoint struct {
	Origin   string
	Size     int64
	Root     []byte
	SignedAt time.Time
	// Note is the whole signed note, as signed.
	Note []byte
}

const signedAtPrefix = "tenure-signed-at "

// checkpointBody is the tlog-checkpoint text: origin, size, base64 root, then the extension
// line "tenure-signed-at <RFC 3339>" (extension lines are opaque to other tools).
func checkpointBody(origin string, size int64, root []byte, at time.Time) string {
	return fmt.Sprintf("%s\n%d\n%s\n%s%s\n", origin, size, base64.StdEncoding.EncodeToString(root), signedAtPrefix, at.UTC().Format(time.RFC3339Nano))
}

// noteSigner signs notes with the ledger's Ed25519 key under the name origin.
func noteSigner(origin string, key ed25519.PrivateKey) (note.Signer, error) {
	v, err := noteVerifier(origin, key.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	skey := fmt.Sprintf("PRIVATE+KEY+%s+%08x+%s", origin, v.KeyHash(), base64.StdEncoding.EncodeToString(append([]byte{1}, key.Seed()...)))
	return note.NewSigner(skey)
}

// noteVerifier verifies notes signed by pub under the name origin.
func noteVerifier(origin string, pub ed25519.PublicKey) (note.Verifier, error) {
	vkey, err := note.NewEd25519VerifierKey(origin, pub)
	if err != nil {
		return nil, fmt.Errorf("checkpoint key: %w", err)
	}
	return note.NewVerifier(vkey)
}

// VerifierKey is pub as a note verifier key ("<origin>+<hash>+<key>"), the form other
// tlog tools take.
func VerifierKey(origin string, pub ed25519.PublicKey) (string, error) {
	return note.NewEd25519VerifierKey(origin, pub)
}

// signCheckpoint signs the tree head as a note.
func signCheckpoint(s note.Signer, origin string, size int64, root []byte, at time.Time) ([]byte, error) {
	return note.Sign(&note.Note{Text: checkpointBody(origin, size, root, at)}, s)
}

// ErrUnknownKey: a checkpoint is signed by none of the trusted keys.
var ErrUnknownKey = errors.New("signed by a key this ledger does not trust")

// OpenCheckpoint verifies a signed checkpoint note with any of pubs under origin and parses
// it.
func OpenCheckpoint(msg []byte, origin string, pubs ...ed25519.PublicKey) (*TreeCheckpoint, error) {
	var vs []note.Verifier
	for _, p := range pubs {
		v, err := noteVerifier(origin, p)
		if err != nil {
			return nil, err
		}
		vs = append(vs, v)
	}
	n, err := note.Open(msg, note.VerifierList(vs...))
	if err != nil {
		var unk *note.UnverifiedNoteError
		if errors.As(err, &unk) {
			names := make([]string, 0, len(unk.Note.UnverifiedSigs))
			for _, s := range unk.Note.UnverifiedSigs {
				names = append(names, fmt.Sprintf("%s+%08x", s.Name, s.Hash))
			}
			return nil, fmt.Errorf("checkpoint %w (%s)", ErrUnknownKey, strings.Join(names, ", "))
		}
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	c, err := parseCheckpointBody(n.Text)
	if err != nil {
		return nil, err
	}
	if c.Origin != origin {
		return nil, fmt.Errorf("checkpoint of log %q, not %q", c.Origin, origin)
	}
	c.Note = msg
	return c, nil
}

func parseCheckpointBody(text string) (*TreeCheckpoint, error) {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 {
		return nil, errors.New("checkpoint: want origin, size and root hash lines")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 {
		return nil, fmt.Errorf("checkpoint: bad tree size %q", lines[1])
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != HashSize {
		return nil, fmt.Errorf("checkpoint: bad root hash %q", lines[2])
	}
	c := &TreeCheckpoint{Origin: lines[0], Size: size, Root: root}
	for _, l := range lines[3:] {
		if v, ok := strings.CutPrefix(l, signedAtPrefix); ok {
			if c.SignedAt, err = time.Parse(time.RFC3339Nano, v); err != nil {
				return nil, fmt.Errorf("checkpoint: bad signing time %q", v)
			}
		}
	}
	return c, nil
}

// VerifyInclusion checks that leaf (the stored hash of the entry with seq) is in the tree of
// size with root, by proof.
func VerifyInclusion(seq, size int64, leaf []byte, proofHashes [][]byte, root []byte) error {
	if seq < 1 || seq > size {
		return fmt.Errorf("entry %d is not in a tree of %d entries", seq, size)
	}
	return proof.VerifyInclusion(hasher, uint64(seq-1), uint64(size), leaf, proofHashes, root)
}

// VerifyConsistency checks that the tree of size2 with root2 extends the tree of size1 with
// root1, by proof.
func VerifyConsistency(size1, size2 int64, proofHashes [][]byte, root1, root2 []byte) error {
	if size1 > size2 {
		return fmt.Errorf("a tree of %d entries cannot extend one of %d", size2, size1)
	}
	return proof.VerifyConsistency(hasher, uint64(size1), uint64(size2), proofHashes, root1, root2)
}

// nodeStore is every node hash of a tree, level by level, built from its leaf hashes; it
// answers proofs. After a prune, the tree's first leaves are gone: their compact range stands
// in for them (every node an inclusion or consistency proof needs there is one of its nodes,
// since those are the largest subtrees left of the kept leaves).
type nodeStore struct {
	size   uint64
	levels [][][]byte                // levels[l][i - first[l]]
	first  []uint64                  // index of levels[l][0]
	prefix map[compact.NodeID][]byte // the pruned prefix's compact range
}

func newNodeStore(leaves [][]byte) *nodeStore {
	st, _ := newNodeStoreFrom(rangeFactory.NewEmptyRange(0), leaves)
	return st
}

// newNodeStoreFrom builds the store of the tree whose first leaves have the compact range
// prefix (from 0) and whose other leaves are leaves.
func newNodeStoreFrom(prefix *compact.Range, leaves [][]byte) (*nodeStore, error) {
	st := &nodeStore{size: prefix.End() + uint64(len(leaves)), prefix: map[compact.NodeID][]byte{}}
	for i, id := range compact.RangeNodes(prefix.Begin(), prefix.End(), nil) {
		st.prefix[id] = prefix.Hashes()[i]
	}
	r := cloneRange(prefix)
	var bad error
	for _, l := range leaves {
		if err := r.Append(l, func(id compact.NodeID, h []byte) {
			for uint(len(st.levels)) <= id.Level {
				st.levels = append(st.levels, nil)
				st.first = append(st.first, id.Index)
			}
			lv := st.levels[id.Level]
			if len(lv) == 0 {
				st.first[id.Level] = id.Index
			}
			if st.first[id.Level]+uint64(len(lv)) != id.Index {
				bad = errors.New("node store: nodes out of order")
			}
			st.levels[id.Level] = append(lv, h)
		}); err != nil {
			return nil, err
		}
	}
	return st, bad
}

func (st *nodeStore) node(id compact.NodeID) []byte {
	if h, ok := st.prefix[id]; ok {
		return h
	}
	if int(id.Level) >= len(st.levels) || id.Index < st.first[id.Level] || id.Index-st.first[id.Level] >= uint64(len(st.levels[id.Level])) {
		return nil
	}
	return st.levels[id.Level][id.Index-st.first[id.Level]]
}

func (st *nodeStore) fetch(n proof.Nodes) ([][]byte, error) {
	hs := make([][]byte, len(n.IDs))
	for i, id := range n.IDs {
		if hs[i] = st.node(id); hs[i] == nil {
			return nil, fmt.Errorf("node %d/%d is not in the tree of %d", id.Level, id.Index, st.size)
		}
	}
	return n.Rehash(hs, hasher.HashChildren)
}

// root is the root of the whole tree.
func (st *nodeStore) root() ([]byte, error) {
	if st.size == 0 {
		return emptyRoot, nil
	}
	// The root is the fold of the compact range [0, size).
	ids := compact.RangeNodes(0, st.size, nil)
	hs := make([][]byte, len(ids))
	for i, id := range ids {
		if hs[i] = st.node(id); hs[i] == nil {
			return nil, fmt.Errorf("node %d/%d is missing", id.Level, id.Index)
		}
	}
	r, err := rangeFactory.NewRange(0, st.size, hs)
	if err != nil {
		return nil, err
	}
	return r.GetRootHash(nil)
}

// inclusion is the proof that entry seq is in the tree of size.
func (st *nodeStore) inclusion(seq, size int64) ([][]byte, error) {
	n, err := proof.Inclusion(uint64(seq-1), uint64(size))
	if err != nil {
		return nil, err
	}
	return st.fetch(n)
}

// consistency is the proof that the tree of size2 extends the tree of size1.
func (st *nodeStore) consistency(size1, size2 int64) ([][]byte, error) {
	n, err := proof.Consistency(uint64(size1), uint64(size2))
	if err != nil {
		return nil, err
	}
	return st.fetch(n)
}
