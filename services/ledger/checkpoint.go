package ledger

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/transparency-dev/merkle/compact"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/keyfile"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

// CheckpointSubject is where the ledger publishes its signed checkpoints (through its
// outbox). The ledger records them like any other event, once, by ce-id.
const CheckpointSubject = "tenure.ledger.checkpoint"

// checkpointType is the CloudEvents type of checkpoint events (the subject has three tokens).
const checkpointType = CheckpointSubject

const checkpointTag = "tenure.ledger.checkpoint.v1"

// checkpointMessage is what a checkpoint's signature covers. With the notation of chainHash:
//
//	str("tenure.ledger.checkpoint.v1") u64(seq) str(head_hash) time(signed_at)
func checkpointMessage(seq int64, headHash []byte, signedAt time.Time) []byte {
	var b []byte
	b = appendStr(b, checkpointTag)
	b = binary.BigEndian.AppendUint64(b, uint64(seq))
	b = appendStr(b, string(headHash))
	b = appendStr(b, signedAt.UTC().Format(time.RFC3339Nano))
	return b
}

func appendStr(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(len(s)))
	return append(b, s...)
}

// KeyID names a public key: the first 16 hex digits of its SHA-256.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// VerifyCheckpoint checks a checkpoint's signature with pub.
func VerifyCheckpoint(pub ed25519.PublicKey, c *ledgerv1.Checkpoint) error {
	if c == nil {
		return errors.New("no checkpoint")
	}
	if len(pub) != ed25519.PublicKeySize {
		return errors.New("not an Ed25519 public key")
	}
	if c.GetKeyId() != KeyID(pub) {
		return fmt.Errorf("checkpoint %d is signed by key %s, not %s", c.GetSeq(), c.GetKeyId(), KeyID(pub))
	}
	if c.GetNote() != "" {
		origin, _, _ := strings.Cut(c.GetNote(), "\n")
		tc, err := OpenCheckpoint([]byte(c.GetNote()), origin, pub)
		if err != nil {
			return fmt.Errorf("checkpoint %d: %w", c.GetSeq(), err)
		}
		if tc.Size != c.GetSeq() || !bytes.Equal(tc.Root, c.GetHeadHash()) || !tc.SignedAt.Equal(c.GetSignedAt().AsTime()) {
			return fmt.Errorf("checkpoint %d: the signature does not match (the note says size %d, root %s, signed %s)", c.GetSeq(), tc.Size, short(tc.Root), tc.SignedAt.Format(time.RFC3339Nano))
		}
		return nil
	}
	if !ed25519.Verify(pub, checkpointMessage(c.GetSeq(), c.GetHeadHash(), c.GetSignedAt().AsTime()), c.GetSignature()) {
		return fmt.Errorf("checkpoint %d: the signature does not match", c.GetSeq())
	}
	return nil
}

// LoadOrCreateKey reads an Ed25519 private key (PEM, PKCS #8) from path, creating the file
// (mode 0600) with a new key when it does not exist, as ssh-keygen does for host keys.
func LoadOrCreateKey(path string) (ed25519.PrivateKey, error) {
	k, err := keyfile.LoadOrCreate(path, func() (crypto.PrivateKey, error) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	})
	if err != nil {
		return nil, fmt.Errorf("ledger key: %w", err)
	}
	return ed25519Key(k)
}

// ParsePrivateKey parses a PEM "PRIVATE KEY" (PKCS #8) holding an Ed25519 key.
func ParsePrivateKey(b []byte) (ed25519.PrivateKey, error) {
	k, err := keyfile.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("ledger key: %w", err)
	}
	return ed25519Key(k)
}

func ed25519Key(k crypto.PrivateKey) (ed25519.PrivateKey, error) {
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("ledger key: %T is not an Ed25519 key", k)
	}
	return priv, nil
}

// PublicKeyPEM encodes pub as a PEM "PUBLIC KEY" (PKIX).
func PublicKeyPEM(pub ed25519.PublicKey) string {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// ParsePublicKeyPEM parses a PEM "PUBLIC KEY" holding an Ed25519 key.
func ParsePublicKeyPEM(b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("want a PEM \"PUBLIC KEY\" block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%T is not an Ed25519 key", k)
	}
	return pub, nil
}

// PublicKey is the key that verifies the ledger's checkpoints and manifests.
func (s *Service) PublicKey() ed25519.PublicKey { return s.key.Public().(ed25519.PublicKey) }

// trustedKey returns the trusted public key with the given id.
func (s *Service) trustedKey(id string) ed25519.PublicKey {
	for _, k := range s.trusted {
		if KeyID(k) == id {
			return k
		}
	}
	return nil
}

// Checkpoint signs the tree in the database when entries other than checkpoint events were
// appended since the last checkpoint, and returns the checkpoint (nil when none was due).
//
// It signs only a tree that extends the last signed checkpoint held outside the database:
// the newest of this process's memory and its witnesses. From that checkpoint's compact
// range and the stored hashes of the entries after it, it computes the root the database's
// tree must have; when the database's head disagrees (an older state restored, the tail cut,
// history rewritten), it refuses for good: see Inconsistent. The checkpoint is published to
// every witness, then stored, and its event enqueued (tenure.ledger.checkpoint). Replicas
// take turns (an advisory lock), so each sees the others' checkpoints.
func (s *Service) Checkpoint(ctx context.Context) (*ledgerv1.Checkpoint, error) {
	if inc := s.inconsistent.Load(); inc != nil {
		return nil, fmt.Errorf("ledger: checkpoint: %w: %s", ErrInconsistent, inc.Detail)
	}
	var (
		cp     *ledgerv1.Checkpoint
		signed *signedTree
		inc    *Inconsistency
	)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", checkpointLock); err != nil {
			return err
		}
		var (
			seq   int64
			root  []byte
			rng   []byte
			now   time.Time
			last  int64
			due   bool
			ready bool
		)
		if err := tx.QueryRow(ctx, `SELECT h.seq, h.hash, h.tree_range, clock_timestamp(), coalesce((SELECT max(seq) FROM checkpoints), 0) FROM head h`).Scan(&seq, &root, &rng, &now, &last); err != nil {
			return fmt.Errorf("read head: %w", err)
		}
		ready = rng != nil // an empty or legacy head becomes a tree at the next append
		ref, err := s.reference(ctx, tx)
		var we *witnessError
		if errors.As(err, &we) {
			inc = we.inc
			if inc == nil {
				inc = &Inconsistency{Finding: "key", Detail: we.err.Error()}
			}
			return nil
		}
		if err != nil {
			return err
		}
		last = max(last, ref.size)
		if ref.size > seq {
			inc = &Inconsistency{Finding: "rollback", SignedSize: ref.size, SignedRoot: ref.root, SignedFrom: ref.from, DatabaseSize: seq, DatabaseRoot: root,
				Detail: fmt.Sprintf("the database's tree has %d entries (root %s), fewer than the checkpoint of %d entries (root %s) signed before (%s): an older state was restored or the tail was cut",
					seq, short(root), ref.size, short(ref.root), ref.from)}
			return nil
		}
		if !ready {
			return nil
		}
		// The database's tree must extend the signed one: checked on every tick, due or not,
		// so a rewrite is found within CheckpointInterval even on an idle ledger.
		tree, err := rangeFromHashes(ctx, tx, ref.size, cloneRange(ref.rng), seq)
		if err != nil {
			return fmt.Errorf("extend the signed tree of %d entries to %d: %w", ref.size, seq, err)
		}
		if got := rootOf(tree); !bytes.Equal(got, root) {
			inc = &Inconsistency{Finding: "fork", SignedSize: ref.size, SignedRoot: ref.root, SignedFrom: ref.from, DatabaseSize: seq, DatabaseRoot: root,
				Detail: fmt.Sprintf("the database's tree of %d entries has root %s, but extending the checkpoint of %d entries (root %s) signed before (%s) with the stored entries gives %s: entries up to %d were rewritten",
					seq, short(root), ref.size, short(ref.root), ref.from, short(got), ref.size)}
			return nil
		}
		if seq <= last {
			return nil
		}
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM entries WHERE seq > $1 AND seq <= $2 AND type <> $3)", last, seq, checkpointType).Scan(&due); err != nil {
			return err
		}
		if !due {
			return nil
		}
		now = dbTime(now)
		note, err := signCheckpoint(s.signer, s.cfg.Origin, seq, root, now)
		if err != nil {
			return err
		}
		sig, err := noteSignature(note)
		if err != nil {
			return err
		}
		// Witnesses first: a checkpoint that is stored but not witnessed would be one a
		// database superuser could delete without a trace.
		for _, w := range s.witnesses {
			if err := w.Publish(ctx, seq, note); err != nil {
				return err
			}
		}
		c := &ledgerv1.Checkpoint{Seq: seq, HeadHash: root, SignedAt: timestamppb.New(now), KeyId: KeyID(s.PublicKey()), Signature: sig, Note: string(note)}
		if _, err := tx.Exec(ctx, "INSERT INTO checkpoints (seq, head_hash, signed_at, key_id, signature, note, tree_range) VALUES ($1, $2, $3, $4, $5, $6, $7)",
			c.Seq, c.HeadHash, now, c.KeyId, c.Signature, c.Note, encodeRange(tree)); err != nil {
			return fmt.Errorf("store checkpoint: %w", err)
		}
		if err := pgstore.Enqueue(ctx, tx, events.Event{
			ID: "ledger:checkpoint:" + strconv.FormatInt(seq, 10), Subject: CheckpointSubject, Type: checkpointType,
			Source: "tenure/ledger", Actor: "ledger", Time: now, Payload: c,
		}); err != nil {
			return err
		}
		cp, signed = c, &signedTree{size: seq, root: root, rng: tree, from: "memory"}
		return nil
	})
	if inc != nil {
		s.markInconsistent(ctx, inc)
		return nil, fmt.Errorf("ledger: checkpoint: %w: %s", ErrInconsistent, inc.Detail)
	}
	if err != nil {
		return nil, fmt.Errorf("ledger: checkpoint: %w", err)
	}
	if cp != nil {
		s.signedMu.Lock()
		if s.signed == nil || s.signed.size < signed.size {
			s.signed = signed
		}
		s.signedMu.Unlock()
		s.lastCP.Store(cp.Seq)
		if s.relay != nil {
			s.relay.Poke()
		}
		s.log.DebugContext(ctx, "checkpoint signed", "size", cp.Seq, "key", cp.KeyId)
	}
	return cp, nil
}

// checkpointLock is the advisory lock under which replicas sign checkpoints one at a time.
const checkpointLock = 0x74656e7572656370 // "tenurecp"

// signedTree is a tree the ledger signed (or a witness holds): size, root, compact range.
type signedTree struct {
	size int64
	root []byte
	rng  *compact.Range
	from string
}

// reference is the last signed checkpoint held outside the database: the newest of memory and
// the witnesses, with its compact range (from its stored checkpoint row when that row's range
// has its root, else computed from the stored hashes). With none (a new ledger, or a first
// start without witnesses yet), it is the database's newest valid tree checkpoint, or the
// empty tree. An unreachable witness is an error (retry), not an inconsistency.
func (s *Service) reference(ctx context.Context, tx pgx.Tx) (*signedTree, error) {
	s.signedMu.Lock()
	ref := s.signed
	s.signedMu.Unlock()
	var newest *TreeCheckpoint
	from := ""
	for _, w := range s.witnesses {
		b, err := w.Latest(ctx)
		if err != nil {
			return nil, err
		}
		if b == nil {
			continue
		}
		c, err := OpenCheckpoint(b, s.cfg.Origin, s.trusted...)
		if err != nil {
			return nil, &witnessError{err: fmt.Errorf("the newest checkpoint in witness %s does not verify with the ledger's keys (was the signing key replaced?): %w", w.Name(), err)}
		}
		if newest == nil || c.Size > newest.Size {
			newest, from = c, "witness "+w.Name()
		}
	}
	if newest == nil && ref == nil {
		// No witness holds anything yet: start from the database's newest tree checkpoint.
		var note string
		err := tx.QueryRow(ctx, "SELECT note FROM checkpoints WHERE note IS NOT NULL ORDER BY seq DESC LIMIT 1").Scan(&note)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return &signedTree{rng: rangeFactory.NewEmptyRange(0), root: emptyRoot, from: "the empty tree"}, nil
		case err != nil:
			return nil, err
		}
		c, err := OpenCheckpoint([]byte(note), s.cfg.Origin, s.trusted...)
		if err != nil {
			return nil, &witnessError{err: fmt.Errorf("the database's newest checkpoint does not verify: %w", err)}
		}
		newest, from = c, "the database (no witness holds a checkpoint yet)"
	}
	if newest == nil || (ref != nil && ref.size >= newest.Size) {
		return ref, nil
	}
	t := &signedTree{size: newest.Size, root: newest.Root, from: from}
	var stored []byte
	if err := tx.QueryRow(ctx, "SELECT tree_range FROM checkpoints WHERE seq = $1 AND note IS NOT NULL", newest.Size).Scan(&stored); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, err
	}
	if r, err := decodeRange(newest.Size, stored); err == nil && stored != nil && bytes.Equal(rootOf(r), newest.Root) {
		t.rng = r
		return t, nil
	}
	// No usable stored range: compute it (from memory's range when there is one, else from
	// the last prune's).
	base, start := rangeFactory.NewEmptyRange(0), int64(0)
	if ref != nil {
		base, start = cloneRange(ref.rng), ref.size
	} else {
		var upTo int64
		var pr []byte
		err := tx.QueryRow(ctx, "SELECT up_to_seq, tree_range FROM prunes WHERE tree_range IS NOT NULL ORDER BY up_to_seq DESC LIMIT 1").Scan(&upTo, &pr)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, err
		}
		if r, derr := decodeRange(upTo, pr); err == nil && derr == nil && upTo <= newest.Size {
			base, start = r, upTo
		}
	}
	var n int64
	if err := tx.QueryRow(ctx, "SELECT seq FROM head").Scan(&n); err != nil {
		return nil, err
	}
	if n < newest.Size {
		t.rng = nil
		return t, nil // the caller reports the rollback
	}
	r, err := rangeFromHashes(ctx, tx, start, base, newest.Size)
	if err != nil {
		return nil, fmt.Errorf("compute the tree of %d entries: %w", newest.Size, err)
	}
	if got := rootOf(r); !bytes.Equal(got, newest.Root) {
		return nil, &witnessError{inc: &Inconsistency{Finding: "fork", SignedSize: newest.Size, SignedRoot: newest.Root, SignedFrom: from, DatabaseSize: n,
			Detail: fmt.Sprintf("the database's first %d entries have root %s, but the checkpoint of %d entries signed before (%s) says %s: entries up to %d were rewritten",
				newest.Size, short(got), newest.Size, from, short(newest.Root), newest.Size)}}
	}
	t.rng = r
	return t, nil
}

// witnessError is a reference that cannot be trusted: an inconsistency, or a witness that
// does not verify.
type witnessError struct {
	err error
	inc *Inconsistency
}

func (e *witnessError) Error() string {
	if e.inc != nil {
		return e.inc.Detail
	}
	return e.err.Error()
}

// ErrInconsistent: the database's tree does not extend the last signed checkpoint, and the
// ledger refuses to sign until an operator acts (docs/ledger.md, "When the ledger refuses to
// sign").
var ErrInconsistent = errors.New("the ledger's database does not extend its last signed checkpoint")

// Inconsistency is why the ledger stopped signing.
type Inconsistency struct {
	Finding      string // rollback, truncation, fork
	Detail       string
	SignedSize   int64
	SignedRoot   []byte
	SignedFrom   string
	DatabaseSize int64
	DatabaseRoot []byte
}

// Inconsistent reports whether the ledger refused to sign (nil when it signs normally). It
// stays set until the process restarts: an operator restores the database (or deals with the
// witness) and restarts the ledger, which then checks again.
func (s *Service) Inconsistent() *Inconsistency { return s.inconsistent.Load() }

// Ready is nil while the ledger can sign checkpoints (for /readyz).
func (s *Service) Ready() error {
	if inc := s.inconsistent.Load(); inc != nil {
		return fmt.Errorf("ledger: %w: %s", ErrInconsistent, inc.Detail)
	}
	return nil
}

// AlertInconsistentSubject is where the ledger announces that it refuses to sign.
const AlertInconsistentSubject = "tenure.alert.ledger_inconsistent"

// markInconsistent latches inc, logs it at error and publishes the alert (directly: the
// database is what cannot be trusted, so not through the outbox).
func (s *Service) markInconsistent(ctx context.Context, inc *Inconsistency) {
	if !s.inconsistent.CompareAndSwap(nil, inc) {
		return
	}
	s.log.ErrorContext(ctx, "LEDGER INCONSISTENT: refusing to sign checkpoints until an operator acts (docs/ledger.md)",
		"finding", inc.Finding, "detail", inc.Detail, "signed_size", inc.SignedSize, "signed_root", hex.EncodeToString(inc.SignedRoot),
		"signed_from", inc.SignedFrom, "database_size", inc.DatabaseSize, "database_root", hex.EncodeToString(inc.DatabaseRoot))
	if s.js == nil {
		return
	}
	now := time.Now().UTC()
	m, err := events.Msg(ctx, events.Event{
		ID: "ledger:inconsistent:" + strconv.FormatInt(now.UnixNano(), 10), Subject: AlertInconsistentSubject, Type: AlertInconsistentSubject,
		Source: "tenure/ledger", Actor: "ledger", Time: now,
		Payload: &ledgerv1.LedgerInconsistentAlert{Finding: inc.Finding, Detail: inc.Detail, SignedSize: inc.SignedSize, SignedRoot: inc.SignedRoot,
			SignedFrom: inc.SignedFrom, DatabaseSize: inc.DatabaseSize, DatabaseRoot: inc.DatabaseRoot, DetectedAt: timestamppb.New(now)},
	})
	if err == nil {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, err = s.js.PublishMsg(pctx, m)
	}
	if err != nil {
		s.log.ErrorContext(ctx, "publish "+AlertInconsistentSubject, "err", err)
	}
}

// noteSignature is the Ed25519 signature inside a signed note with one signature.
func noteSignature(msg []byte) ([]byte, error) {
	i := bytes.LastIndex(msg, []byte("\n\n"))
	if i < 0 {
		return nil, errors.New("not a signed note")
	}
	line := strings.TrimSpace(string(msg[i+2:]))
	f := strings.Fields(line)
	if len(f) != 3 {
		return nil, errors.New("not a signed note")
	}
	b, err := base64.StdEncoding.DecodeString(f[2])
	if err != nil || len(b) != 4+ed25519.SignatureSize {
		return nil, errors.New("not an Ed25519 note signature")
	}
	return b[4:], nil
}

// checkpointLoop signs a checkpoint every CheckpointInterval (when one is due) until ctx ends.
func (s *Service) checkpointLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		// An inconsistency is logged (at error) and announced once, when it is found.
		if _, err := s.Checkpoint(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, ErrInconsistent) {
			s.log.ErrorContext(ctx, "checkpoint failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.cpDue:
		}
	}
}

// afterAppend wakes revocation watchers and asks for a checkpoint once CheckpointEvery
// entries followed the last one.
func (s *Service) afterAppend(head int64) {
	s.appended.fire()
	if head-s.lastCP.Load() >= int64(s.cfg.CheckpointEvery) {
		select {
		case s.cpDue <- struct{}{}:
		default:
		}
	}
}

// loadCheckpoints returns the checkpoints with after < seq, in order, at most limit (0: all).
func loadCheckpoints(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, after int64, limit int) ([]*ledgerv1.Checkpoint, error) {
	sql := "SELECT seq, head_hash, signed_at, key_id, signature, coalesce(note, '') FROM checkpoints WHERE seq > $1 ORDER BY seq"
	args := []any{after}
	if limit > 0 {
		sql += " LIMIT $2"
		args = append(args, limit)
	}
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*ledgerv1.Checkpoint
	for rows.Next() {
		var (
			c  ledgerv1.Checkpoint
			at time.Time
		)
		if err := rows.Scan(&c.Seq, &c.HeadHash, &at, &c.KeyId, &c.Signature, &c.Note); err != nil {
			return nil, err
		}
		c.SignedAt = timestamppb.New(at)
		out = append(out, &c)
	}
	return out, rows.Err()
}

// ListCheckpoints lists checkpoints after after_seq (default limit 100, at most 1000).
func (s *Service) ListCheckpoints(ctx context.Context, req *ledgerv1.ListCheckpointsRequest) (*ledgerv1.ListCheckpointsResponse, error) {
	limit := int(req.GetLimit())
	switch {
	case limit <= 0:
		limit = DefaultQueryLimit
	case limit > MaxQueryLimit:
		limit = MaxQueryLimit
	}
	if req.GetAfterSeq() < 0 {
		return nil, status.Error(codes.InvalidArgument, "after_seq must not be negative")
	}
	cps, err := loadCheckpoints(ctx, s.pool, req.GetAfterSeq(), limit)
	if err != nil {
		return nil, s.internal(ctx, "list checkpoints", err)
	}
	return &ledgerv1.ListCheckpointsResponse{Checkpoints: cps}, nil
}

// GetPublicKey returns the signing key's public half.
func (s *Service) GetPublicKey(context.Context, *ledgerv1.GetPublicKeyRequest) (*ledgerv1.GetPublicKeyResponse, error) {
	pub := s.PublicKey()
	return &ledgerv1.GetPublicKeyResponse{PublicKey: pub, KeyId: KeyID(pub), Pem: PublicKeyPEM(pub)}, nil
}
