package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

// Verify checks the whole chain and the signed checkpoints in one consistent snapshot:
//
//   - the sequence is gapless from 1, each entry's prev_hash is the previous entry's hash
//     (genesis: 32 zero bytes), each hash is SHA-256(prev_hash || canonical(entry)), and the
//     head row names the last entry;
//   - each checkpoint is signed by a trusted key (the signing key or Config.TrustedKeys) and
//     its hash is the hash of the entry at its sequence, which catches a chain rewritten
//     consistently from some entry on (triggers dropped, every later hash recomputed);
//   - no entry older than CheckpointGrace lies beyond the last checkpoint (checkpoint events
//     aside), which is what deleting the checkpoints looks like.
//
// It reports the first problem, in sequence order. An error means the check could not run
// (the database failed), not that the chain is broken.
//
// The chain is read with binary COPY by Config.VerifyWorkers connections in parallel, in
// pages of VerifyPageSize entries, all in the snapshot of the first transaction. Each
// entry's hash depends only on its own row (prev_hash is stored), so pages are checked
// independently and the link between two pages is checked when they are joined.
func (s *Service) Verify(ctx context.Context) (*ledgerv1.VerifyResponse, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("ledger: verify: %w", err)
	}
	defer conn.Release()
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("ledger: verify: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var (
		headSeq  int64
		headHash []byte
		snapshot string
		now      time.Time
	)
	if err := tx.QueryRow(ctx, "SELECT pg_export_snapshot(), clock_timestamp()").Scan(&snapshot, &now); err != nil {
		return nil, fmt.Errorf("ledger: verify: export snapshot: %w", err)
	}
	if err := tx.QueryRow(ctx, "SELECT seq, hash FROM head").Scan(&headSeq, &headHash); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return &ledgerv1.VerifyResponse{Problem: "the head row is missing", FirstBrokenSeq: 1}, nil
		}
		return nil, fmt.Errorf("ledger: verify: read head: %w", err)
	}
	cps, err := loadCheckpoints(ctx, tx, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("ledger: verify: read checkpoints: %w", err)
	}
	var (
		pruneSeq  int64
		pruneHash []byte
	)
	if err := tx.QueryRow(ctx, "SELECT up_to_seq, hash FROM prunes ORDER BY up_to_seq DESC LIMIT 1").Scan(&pruneSeq, &pruneHash); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("ledger: verify: read prunes: %w", err)
	}
	res := &ledgerv1.VerifyResponse{HeadHash: headHash, PrunedThroughSeq: pruneSeq}

	// Signatures first: they need no entry. A bad one is a problem at its sequence.
	var sigProblem *problem
	valid := make(map[int64]*ledgerv1.Checkpoint, len(cps))
	var lastValid int64
	for _, c := range cps {
		pub := s.trustedKey(c.GetKeyId())
		var err error
		if pub == nil {
			err = fmt.Errorf("checkpoint %d is signed by key %s, which this ledger does not trust (trusted: %s)", c.Seq, c.KeyId, s.trustedIDs())
		} else {
			err = VerifyCheckpoint(pub, c)
		}
		if err != nil {
			if sigProblem == nil {
				sigProblem = &problem{seq: c.Seq, msg: err.Error()}
			}
			continue
		}
		valid[c.Seq] = c
		lastValid = c.Seq
	}

	prev, last := genesis, int64(0)
	if pruneSeq > 0 {
		// Entries 1..pruneSeq were archived and pruned: the rest hangs off the signed
		// checkpoint at pruneSeq, which must be older than the retention period.
		c := valid[pruneSeq]
		var msg string
		switch {
		case c == nil:
			msg = fmt.Sprintf("entries 1..%d are marked pruned, but no valid signed checkpoint at %d anchors the rest of the chain", pruneSeq, pruneSeq)
		case !bytes.Equal(c.HeadHash, pruneHash):
			msg = fmt.Sprintf("entries 1..%d are marked pruned with hash %s, but the signed checkpoint at %d says %s", pruneSeq, short(pruneHash), pruneSeq, short(c.HeadHash))
		case c.SignedAt.AsTime().After(now.Add(-s.cfg.Retention + s.cfg.CheckpointGrace)):
			msg = fmt.Sprintf("entries 1..%d are marked pruned, but checkpoint %d was signed %s, within the retention period (%s): history was deleted",
				pruneSeq, pruneSeq, c.SignedAt.AsTime().Format(time.RFC3339), s.cfg.Retention)
		}
		if msg != "" {
			res.FirstBrokenSeq, res.Problem = 1, msg
			return res, nil
		}
		prev, last = pruneHash, pruneSeq
	}
	v := &verifier{
		cps: valid, coveredTo: lastValid, every: s.cfg.CheckpointEvery,
		staleBefore: now.Add(-s.cfg.CheckpointGrace).UnixMicro(), grace: s.cfg.CheckpointGrace,
	}
	pages := s.pages(last+1, headSeq)
	results, err := s.verifyPages(ctx, snapshot, pages, v)
	if err != nil {
		return nil, fmt.Errorf("ledger: verify: %w", err)
	}

	broken := func(p *problem) (*ledgerv1.VerifyResponse, error) {
		if sigProblem != nil && sigProblem.seq <= p.seq {
			p = sigProblem
		}
		res.Ok, res.FirstBrokenSeq, res.Problem = false, p.seq, p.msg
		return res, nil
	}
	for _, r := range results {
		if r.n == 0 {
			continue
		}
		if r.first != last+1 {
			return broken(&problem{last + 1, fmt.Sprintf("entry %d is missing: the entry after %d is %d", last+1, last, r.first)})
		}
		if !bytes.Equal(r.firstPrev, prev) {
			return broken(&problem{r.first, fmt.Sprintf("entry %d: prev_hash %s does not match the hash of entry %d (%s)", r.first, short(r.firstPrev), last, short(prev))})
		}
		res.EntriesChecked += r.checked
		res.CheckpointsChecked += r.cpChecked
		if r.prob != nil {
			return broken(r.prob)
		}
		prev, last = r.lastHash, r.last
	}
	switch {
	case last < headSeq:
		return broken(&problem{last + 1, fmt.Sprintf("the chain ends at entry %d but the head is at %d: %s missing", last, headSeq, span(last+1, headSeq, "is", "are"))})
	case last > headSeq:
		return broken(&problem{headSeq + 1, fmt.Sprintf("%s beyond the head (seq %d): not appended by the ledger", span(headSeq+1, last, "lies", "lie"), headSeq)})
	case !bytes.Equal(headHash, prev):
		return broken(&problem{max(headSeq, 1), fmt.Sprintf("the head hash %s does not match the hash of entry %d (%s)", short(headHash), last, short(prev))})
	case lastValid > last:
		return broken(&problem{last + 1, fmt.Sprintf("signed checkpoint %d covers entries the chain no longer has (it ends at %d): entries were removed", lastValid, last)})
	}
	if sigProblem != nil {
		return broken(sigProblem)
	}
	res.Ok = true
	res.LastCheckpointSeq = lastValid
	return res, nil
}

func (s *Service) trustedIDs() string {
	ids := make([]string, len(s.trusted))
	for i, k := range s.trusted {
		ids[i] = KeyID(k)
	}
	return fmt.Sprint(ids)
}

type problem struct {
	seq int64
	msg string
}

// page is a range [from, to) of sequences; to = 0 means unbounded.
type page struct{ from, to int64 }

func (s *Service) pages(from, head int64) []page {
	size := int64(s.cfg.VerifyPageSize)
	var ps []page
	for ; from+size <= head; from += size {
		ps = append(ps, page{from, from + size})
	}
	return append(ps, page{from, 0}) // the rest, and anything beyond the head
}

// verifier holds what every page's check shares (read only).
type verifier struct {
	cps         map[int64]*ledgerv1.Checkpoint
	coveredTo   int64
	staleBefore int64 // microseconds since the Unix epoch
	grace       time.Duration
	every       int
}

// pageResult is what one page held.
type pageResult struct {
	first, last     int64
	firstPrev       []byte
	lastHash        []byte
	n               int64 // rows read before stopping
	checked         int64 // rows that passed every check
	cpChecked       int64
	prob            *problem
	pending         []byte
	hin             []byte
	hdrs            []header
	header, trailer bool
	v               *verifier
}

var errStopPage = errors.New("page has a problem")

// verifyPages checks pages on VerifyWorkers connections of their own, in the snapshot.
func (s *Service) verifyPages(ctx context.Context, snapshot string, pages []page, v *verifier) ([]*pageResult, error) {
	results := make([]*pageResult, len(pages))
	next := make(chan int)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(next)
		for i := range pages {
			select {
			case next <- i:
			case <-gctx.Done():
				return nil
			}
		}
		return nil
	})
	// Stop handing out pages after the first problem: later pages cannot matter.
	var (
		mu       sync.Mutex
		firstBad = len(pages)
	)
	workers := min(s.cfg.VerifyWorkers, len(pages))
	for range workers {
		g.Go(func() error {
			var conn *pgx.Conn
			defer func() {
				if conn != nil {
					conn.Close(context.WithoutCancel(ctx))
				}
			}()
			for i := range next {
				mu.Lock()
				skip := i > firstBad
				mu.Unlock()
				if skip {
					continue
				}
				if conn == nil {
					c, err := s.snapshotConn(gctx, snapshot)
					if err != nil {
						return err
					}
					conn = c
				}
				r := &pageResult{v: v}
				results[i] = r
				p := pages[i]
				q := fmt.Sprintf("COPY (SELECT %s FROM entries WHERE seq >= %d", verifyColumns, p.from)
				if p.to > 0 {
					q += fmt.Sprintf(" AND seq < %d", p.to)
				}
				q += " ORDER BY seq) TO STDOUT (FORMAT binary)"
				_, err := conn.PgConn().CopyTo(gctx, r, q)
				if errors.Is(err, errStopPage) {
					conn = nil // CopyTo closed it
					mu.Lock()
					firstBad = min(firstBad, i)
					mu.Unlock()
					continue
				}
				if err != nil {
					return fmt.Errorf("read entries %d..: %w", p.from, err)
				}
				if r.prob == nil && len(r.pending) > 0 {
					return fmt.Errorf("read entries %d..: %d bytes of a truncated row", p.from, len(r.pending))
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out := results[:0]
	for _, r := range results {
		if r == nil {
			break // not read: after a page with a problem
		}
		out = append(out, r)
	}
	return out, nil
}

// snapshotConn opens a connection that sees the snapshot of the verifying transaction.
func (s *Service) snapshotConn(ctx context.Context, snapshot string) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, err
	}
	// Pages are read in primary key order: a sort (which a fresh, unanalyzed table gets,
	// spilling to disk) costs more than the whole check.
	if _, err := conn.Exec(ctx, "SET enable_sort = off; SET enable_bitmapscan = off"); err != nil {
		conn.Close(ctx)
		return nil, err
	}
	if _, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		conn.Close(ctx)
		return nil, err
	}
	if _, err := conn.Exec(ctx, "SET TRANSACTION SNAPSHOT "+quoteLiteral(snapshot)); err != nil {
		conn.Close(ctx)
		return nil, err
	}
	return conn, nil
}

func quoteLiteral(s string) string {
	return "'" + string(bytes.ReplaceAll([]byte(s), []byte("'"), []byte("''"))) + "'"
}

// verifyColumns are in the order the hash input needs them.
const verifyColumns = "prev_hash, seq, msg_id, subject, type, source, worker_id, system, actor, event_time, recorded_at, stream_seq, trace_id, headers, payload, hash"

const verifyFields = 16

var copySignature = []byte("PGCOPY\n\xff\r\n\x00")

// Write takes the binary COPY stream (one row per write, as PostgreSQL sends it, but any
// split works) and checks each complete row.
func (r *pageResult) Write(p []byte) (int, error) {
	if r.prob != nil {
		return 0, errStopPage
	}
	r.pending = append(r.pending, p...)
	buf := r.pending
	if !r.header {
		if len(buf) < len(copySignature)+8 {
			return len(p), nil
		}
		if !bytes.Equal(buf[:len(copySignature)], copySignature) {
			return 0, errors.New("not a binary COPY stream")
		}
		ext := int(binary.BigEndian.Uint32(buf[len(copySignature)+4:]))
		if len(buf) < len(copySignature)+8+ext {
			return len(p), nil
		}
		buf = buf[len(copySignature)+8+ext:]
		r.header = true
	}
	var fields [verifyFields][]byte
	for len(buf) >= 2 && !r.trailer {
		nf := int16(binary.BigEndian.Uint16(buf))
		if nf == -1 {
			r.trailer = true
			buf = buf[2:]
			break
		}
		if nf != verifyFields {
			return 0, fmt.Errorf("COPY row with %d fields", nf)
		}
		off := 2
		complete := true
		for i := range verifyFields {
			if len(buf) < off+4 {
				complete = false
				break
			}
			l := int(int32(binary.BigEndian.Uint32(buf[off:])))
			off += 4
			if l < 0 {
				l = 0 // NULL: columns are NOT NULL, so this cannot happen
			}
			if len(buf) < off+l {
				complete = false
				break
			}
			fields[i] = buf[off : off+l]
			off += l
		}
		if !complete {
			break
		}
		r.row(&fields)
		buf = buf[off:]
		if r.prob != nil {
			r.pending = r.pending[:0]
			return 0, errStopPage
		}
	}
	// Keep the unparsed rest at the start of pending.
	n := copy(r.pending, buf)
	r.pending = r.pending[:n]
	return len(p), nil
}

// pgEpochMicros is 2000-01-01 00:00:00 UTC in microseconds since the Unix epoch.
const pgEpochMicros = 946684800 * 1000000

// row checks one entry: link, content hash, checkpoint, coverage.
func (r *pageResult) row(f *[verifyFields][]byte) {
	prevHash, hash := f[0], f[15]
	seq := int64(binary.BigEndian.Uint64(f[1]))
	if r.n == 0 {
		r.first = seq
		r.firstPrev = slices.Clone(prevHash)
	} else {
		if seq != r.last+1 {
			r.prob = &problem{r.last + 1, fmt.Sprintf("entry %d is missing: the entry after %d is %d", r.last+1, r.last, seq)}
			return
		}
		if !bytes.Equal(prevHash, r.lastHash) {
			r.prob = &problem{seq, fmt.Sprintf("entry %d: prev_hash %s does not match the hash of entry %d (%s)", seq, short(prevHash), r.last, short(r.lastHash))}
			return
		}
	}
	r.n++
	b := append(r.hin[:0], prevHash...)
	b = appendStr(b, canonicalTag)
	b = binary.BigEndian.AppendUint64(b, uint64(seq))
	for _, i := range []int{2, 3, 4, 5, 6, 7, 8} { // msg_id subject type source worker_id system actor
		b = appendBytes(b, f[i])
	}
	eventTime := int64(binary.BigEndian.Uint64(f[9])) + pgEpochMicros
	recordedAt := int64(binary.BigEndian.Uint64(f[10])) + pgEpochMicros
	b = appendTime(b, eventTime)
	b = appendTime(b, recordedAt)
	b = append(b, f[11]...) // stream_seq: int8, big-endian, as u64
	b = appendBytes(b, f[12])
	jb := f[13]
	var err error
	if len(jb) == 0 || jb[0] != 1 {
		err = errors.New("unknown jsonb format")
	} else {
		r.hdrs, err = parseHeaders(r.hdrs[:0], jb[1:])
	}
	if err != nil {
		r.prob = &problem{seq, fmt.Sprintf("entry %d: headers are not a map of string lists: %v", seq, err)}
		return
	}
	b = binary.BigEndian.AppendUint64(b, uint64(len(r.hdrs)))
	for _, h := range r.hdrs {
		b = appendBytes(b, h.name)
		b = binary.BigEndian.AppendUint64(b, uint64(len(h.vals)))
		for _, v := range h.vals {
			b = appendBytes(b, v)
		}
	}
	b = appendBytes(b, f[14])
	r.hin = b
	sum := sha256.Sum256(b)
	if !bytes.Equal(sum[:], hash) {
		r.prob = &problem{seq, fmt.Sprintf("entry %d: stored hash %s does not match its content (computed %s)", seq, short(hash), short(sum[:]))}
		return
	}
	if c := r.v.cps[seq]; c != nil {
		if !bytes.Equal(c.HeadHash, hash) {
			r.prob = &problem{seq, fmt.Sprintf("entry %d does not match signed checkpoint %d (signed %s, hash %s, entry hash %s): the chain was rewritten",
				seq, c.Seq, c.SignedAt.AsTime().Format(time.RFC3339), short(c.HeadHash), short(hash))}
			return
		}
		r.cpChecked++
	}
	if seq > r.v.coveredTo && recordedAt < r.v.staleBefore && string(f[4]) != checkpointType {
		r.prob = &problem{seq, fmt.Sprintf("entry %d, recorded %s, is covered by no signed checkpoint (the last one is at %d; one is signed every %d entries or within %s): checkpoints are missing",
			seq, time.UnixMicro(recordedAt).UTC().Format(time.RFC3339), r.v.coveredTo, r.v.every, r.v.grace)}
		return
	}
	r.checked++
	r.last = seq
	r.lastHash = append(r.lastHash[:0], hash...)
}

func appendBytes(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(len(s)))
	return append(b, s...)
}

// appendTime appends time(t) for t in microseconds since the Unix epoch.
func appendTime(b []byte, micros int64) []byte {
	var tmp [40]byte
	ts := time.UnixMicro(micros).UTC().AppendFormat(tmp[:0], time.RFC3339Nano)
	return appendBytes(b, ts)
}

// header is one stored header: name and values, as slices of the jsonb text.
type header struct {
	name []byte
	vals [][]byte
}

// parseHeaders parses the jsonb text of the headers column, {"name": ["value", ...], ...},
// sorted by name. Strings without escapes are sliced from the text; anything unusual is
// handed to encoding/json, which decides as Query and the old Verify did.
func parseHeaders(out []header, text []byte) ([]header, error) {
	if hs, ok := fastHeaders(out, text); ok {
		slices.SortFunc(hs, func(a, b header) int { return bytes.Compare(a.name, b.name) })
		dup := false
		for i := 1; i < len(hs); i++ {
			dup = dup || bytes.Equal(hs[i-1].name, hs[i].name)
		}
		if !dup { // encoding/json merges duplicate names: leave those to it
			return hs, nil
		}
	}
	var m map[string][]string
	if err := json.Unmarshal(text, &m); err != nil {
		return nil, err
	}
	out = out[:0]
	for k, vs := range m {
		h := header{name: []byte(k)}
		for _, v := range vs {
			h.vals = append(h.vals, []byte(v))
		}
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b header) int { return bytes.Compare(a.name, b.name) })
	return out, nil
}

// fastHeaders parses the common case: no escapes, no nulls, valid UTF-8.
func fastHeaders(out []header, t []byte) ([]header, bool) {
	if !utf8.Valid(t) {
		return nil, false
	}
	i := 0
	ws := func() {
		for i < len(t) && (t[i] == ' ' || t[i] == '\n' || t[i] == '\t' || t[i] == '\r') {
			i++
		}
	}
	str := func() ([]byte, bool) {
		if i >= len(t) || t[i] != '"' {
			return nil, false
		}
		j := i + 1
		for j < len(t) && t[j] != '"' {
			if t[j] == '\\' || t[j] < 0x20 {
				return nil, false
			}
			j++
		}
		if j >= len(t) {
			return nil, false
		}
		s := t[i+1 : j]
		i = j + 1
		return s, true
	}
	ws()
	if i >= len(t) || t[i] != '{' {
		return nil, false
	}
	i++
	ws()
	if i < len(t) && t[i] == '}' {
		i++
		ws()
		return out[:0], i == len(t)
	}
	n := 0
	for {
		ws()
		name, ok := str()
		if !ok {
			return nil, false
		}
		ws()
		if i >= len(t) || t[i] != ':' {
			return nil, false
		}
		i++
		ws()
		if i >= len(t) || t[i] != '[' {
			return nil, false
		}
		i++
		if n < len(out) {
			out[n].name, out[n].vals = name, out[n].vals[:0]
		} else {
			out = append(out, header{name: name})
		}
		h := &out[n]
		n++
		ws()
		if i < len(t) && t[i] == ']' {
			i++
		} else {
			for {
				ws()
				v, ok := str()
				if !ok {
					return nil, false
				}
				h.vals = append(h.vals, v)
				ws()
				if i < len(t) && t[i] == ',' {
					i++
					continue
				}
				if i < len(t) && t[i] == ']' {
					i++
					break
				}
				return nil, false
			}
		}
		ws()
		if i < len(t) && t[i] == ',' {
			i++
			continue
		}
		if i < len(t) && t[i] == '}' {
			i++
			ws()
			if i != len(t) {
				return nil, false
			}
			return out[:n], true
		}
		return nil, false
	}
}
