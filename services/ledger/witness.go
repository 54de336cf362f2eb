package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/natsx"
)

// A Witness keeps the ledger's signed checkpoints outside PostgreSQL, where the people who
// run the database cannot change them. The ledger publishes every checkpoint to each of its
// witnesses before it stores it, and never signs a tree that does not extend the newest
// checkpoint a witness holds.
type Witness interface {
	// Name says where the witness is, for messages.
	Name() string
	// Publish stores a signed checkpoint note. It returns only once the note is durable.
	Publish(ctx context.Context, size int64, note []byte) error
	// Latest returns the newest stored note (the largest tree), nil when there is none.
	Latest(ctx context.Context) ([]byte, error)
}

// StreamWitness is the JetStream witness: natsx.WitnessStream (no delete, no purge), subject
// natsx.WitnessSubject.
type StreamWitness struct {
	JS jetstream.JetStream

	mu     sync.Mutex
	stream jetstream.Stream // looked up once
}

var _ Witness = (*StreamWitness)(nil)

func (*StreamWitness) Name() string { return "stream " + natsx.WitnessStream }

func (w *StreamWitness) Publish(ctx context.Context, size int64, note []byte) error {
	sum := sha256.Sum256(note)
	m := &nats.Msg{Subject: natsx.WitnessSubject, Data: note, Header: nats.Header{}}
	m.Header.Set("Tenure-Tree-Size", fmt.Sprint(size))
	if _, err := w.JS.PublishMsg(ctx, m, jetstream.WithMsgID("ledger-checkpoint-"+hex.EncodeToString(sum[:16]))); err != nil {
		return fmt.Errorf("witness %s: %w", natsx.WitnessStream, err)
	}
	return nil
}

func (w *StreamWitness) Latest(ctx context.Context) ([]byte, error) {
	w.mu.Lock()
	st := w.stream
	w.mu.Unlock()
	if st == nil {
		var err error
		if st, err = w.JS.Stream(ctx, natsx.WitnessStream); err != nil {
			return nil, fmt.Errorf("witness %s: %w", natsx.WitnessStream, err)
		}
		w.mu.Lock()
		w.stream = st
		w.mu.Unlock()
	}
	return latestOn(ctx, st)
}

// LatestWitnessed reads the newest checkpoint note on the witness stream (nil when none).
// The ledger, the security user and the auditor user may call it.
func LatestWitnessed(ctx context.Context, js jetstream.JetStream) ([]byte, error) {
	st, err := js.Stream(ctx, natsx.WitnessStream)
	if err != nil {
		return nil, fmt.Errorf("witness %s: %w", natsx.WitnessStream, err)
	}
	return latestOn(ctx, st)
}

func latestOn(ctx context.Context, st jetstream.Stream) ([]byte, error) {
	m, err := st.GetLastMsgForSubject(ctx, natsx.WitnessSubject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("witness %s: %w", natsx.WitnessStream, err)
	}
	return m.Data, nil
}

// DirWitness keeps each checkpoint as a file of its own under a directory (an append-only
// mount, or a directory synced to object storage with object lock), one folder per UTC day:
// <dir>/YYYY/MM/DD/<size, 20 digits>-<hash>.checkpoint. A file is never overwritten.
type DirWitness struct{ Dir string }

var _ Witness = DirWitness{}

func (w DirWitness) Name() string { return "directory " + w.Dir }

func witnessFileName(size int64, note []byte) string {
	sum := sha256.Sum256(note)
	return fmt.Sprintf("%020d-%s.checkpoint", size, hex.EncodeToString(sum[:8]))
}

func (w DirWitness) Publish(_ context.Context, size int64, note []byte) error {
	day := filepath.Join(w.Dir, time.Now().UTC().Format("2006/01/02"))
	if err := os.MkdirAll(day, 0o750); err != nil {
		return fmt.Errorf("witness %s: %w", w.Dir, err)
	}
	p := filepath.Join(day, witnessFileName(size, note))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o440)
	if errors.Is(err, os.ErrExist) {
		return nil // the same note, published before
	}
	if err != nil {
		return fmt.Errorf("witness %s: %w", w.Dir, err)
	}
	if _, err := f.Write(note); err != nil {
		f.Close()
		return fmt.Errorf("witness %s: %w", p, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("witness %s: %w", p, err)
	}
	return f.Close()
}

// Latest reads the largest checkpoint of the newest day.
func (w DirWitness) Latest(context.Context) ([]byte, error) {
	dir := w.Dir
	for depth := 0; depth < 3; depth++ { // year, month, day
		names, err := sortedNames(dir, func(n string) bool { return len(n) >= 2 && strings.Trim(n, "0123456789") == "" })
		if err != nil || len(names) == 0 {
			return nil, err
		}
		dir = filepath.Join(dir, names[len(names)-1])
	}
	names, err := sortedNames(dir, func(n string) bool { return strings.HasSuffix(n, ".checkpoint") })
	if err != nil || len(names) == 0 {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, names[len(names)-1]))
	if err != nil {
		return nil, fmt.Errorf("witness %s: %w", w.Dir, err)
	}
	return b, nil
}

func sortedNames(dir string, keep func(string) bool) ([]string, error) {
	des, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("witness %s: %w", dir, err)
	}
	var names []string
	for _, de := range des {
		if keep(de.Name()) {
			names = append(names, de.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}
