package ledger

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
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

// Checkpoint signs the current head when entries other than checkpoint events were
// appended since the last checkpoint, stores the checkpoint and enqueues its event (published
// by the relay on tenure.ledger.checkpoint). It returns the checkpoint, or nil when none
// was due. Replicas may race: one checkpoint per seq is stored, and its event id derives
// from the seq, so it is published and recorded once.
func (s *Service) Checkpoint(ctx context.Context) (*ledgerv1.Checkpoint, error) {
	var cp *ledgerv1.Checkpoint
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var (
			seq, last int64
			hash      []byte
			now       time.Time
			due       bool
		)
		if err := tx.QueryRow(ctx, `SELECT h.seq, h.hash, clock_timestamp(), coalesce((SELECT max(seq) FROM checkpoints), 0) FROM head h`).Scan(&seq, &hash, &now, &last); err != nil {
			return fmt.Errorf("read head: %w", err)
		}
		if seq <= last {
			s.lastCP.Store(last)
			return nil
		}
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM entries WHERE seq > $1 AND seq <= $2 AND type <> $3)", last, seq, checkpointType).Scan(&due); err != nil {
			return err
		}
		if !due {
			s.lastCP.Store(last)
			return nil
		}
		now = dbTime(now)
		c := &ledgerv1.Checkpoint{Seq: seq, HeadHash: hash, SignedAt: timestamppb.New(now), KeyId: KeyID(s.PublicKey())}
		c.Signature = ed25519.Sign(s.key, checkpointMessage(seq, hash, now))
		tag, err := tx.Exec(ctx, "INSERT INTO checkpoints (seq, head_hash, signed_at, key_id, signature) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
			c.Seq, c.HeadHash, now, c.KeyId, c.Signature)
		if err != nil {
			return fmt.Errorf("store checkpoint: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return nil // another replica signed this head
		}
		if err := pgstore.Enqueue(ctx, tx, events.Event{
			ID: "ledger:checkpoint:" + strconv.FormatInt(seq, 10), Subject: CheckpointSubject, Type: checkpointType,
			Source: "tenure/ledger", Actor: "ledger", Time: now, Payload: c,
		}); err != nil {
			return err
		}
		cp = c
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ledger: checkpoint: %w", err)
	}
	if cp != nil {
		s.lastCP.Store(cp.Seq)
		if s.relay != nil {
			s.relay.Poke()
		}
		s.log.DebugContext(ctx, "checkpoint signed", "seq", cp.Seq, "key", cp.KeyId)
	}
	return cp, nil
}

// checkpointLoop signs a checkpoint every CheckpointInterval (when one is due) until ctx ends.
func (s *Service) checkpointLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		if _, err := s.Checkpoint(ctx); err != nil && ctx.Err() == nil {
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
	sql := "SELECT seq, head_hash, signed_at, key_id, signature FROM checkpoints WHERE seq > $1 ORDER BY seq"
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
		if err := rows.Scan(&c.Seq, &c.HeadHash, &at, &c.KeyId, &c.Signature); err != nil {
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
