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
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/sync/errgroup"

	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

// Verify checks the ledger against itself and against the newest checkpoint its witnesses
// hold (see VerifyAgainst).
func (s *Service) Verify(ctx context.Context) (*ledgerv1.VerifyResponse, error) {
	return s.VerifyAgainst(ctx, nil)
}

// ErrWitnessUnavailable: no witnessed checkpoint could be read, so the check did not run.
var ErrWitnessUnavailable = errors.New("the witness could not be read")

// VerifyAgainst checks, in one consistent snapshot of the database:
//
//   - the entries are gapless from 1 (or from the last prune), each stored hash is the leaf
//     hash of the entry's content (for the legacy prefix: the chain hash, and each prev_hash
//     links to the entry before);
//   - each signed checkpoint verifies with a trusted key and its root is the root of the tree
//     of the first seq entries (legacy checkpoints: the hash of entry seq);
//   - the head names the last entry and the tree's root;
//   - no entry older than CheckpointGrace lies beyond the newest checkpoint;
//   - the witnessed checkpoint (witnessed, a signed note; nil: the newest any witness holds)
//     is a prefix of the database's tree: its size is no larger and its root is the root of
//     the database's tree at that size. The response carries a consistency proof from it to
//     the database's tree, for the caller to check on its own.
//
// It reports the first problem, and names what it is (VerifyResponse.finding). An error
// means the check could not run (the database or the witness failed), not that the ledger
// is broken.
//
// The entries are read with binary COPY by Config.VerifyWorkers connections in parallel, in
// pages of VerifyPageSize entries, all in the snapshot of the first transaction. Each page
// hashes its entries and builds the compact range of its leaves; the ranges are merged in
// order, which gives the root at every size a checkpoint names.
func (s *Service) VerifyAgainst(ctx context.Context, witnessed []byte) (*ledgerv1.VerifyResponse, error) {
	res := &ledgerv1.VerifyResponse{}
	var wcp *TreeCheckpoint
	if witnessed == nil {
		for _, w := range s.witnesses {
			b, err := w.Latest(ctx)
			if err != nil {
				return nil, fmt.Errorf("ledger: verify: %w: %w", ErrWitnessUnavailable, err)
			}
			if b == nil {
				continue
			}
			c, err := OpenCheckpoint(b, s.cfg.Origin, s.trusted...)
			if err != nil {
				res.Finding, res.Problem = "checkpoint", fmt.Sprintf("the newest checkpoint in witness %s does not verify with the ledger's keys (trusted: %s): %v: was the signing key replaced?", w.Name(), s.trustedIDs(), err)
				return res, nil
			}
			if wcp == nil || c.Size > wcp.Size {
				wcp, res.WitnessedFrom = c, w.Name()
			}
		}
	} else {
		c, err := OpenCheckpoint(witnessed, s.cfg.Origin, s.trusted...)
		if err != nil {
			res.Finding, res.Problem = "checkpoint", fmt.Sprintf("the given checkpoint does not verify with the ledger's keys (trusted: %s): %v: was the signing key replaced?", s.trustedIDs(), err)
			return res, nil
		}
		wcp, res.WitnessedFrom = c, "request"
	}
	if wcp != nil {
		res.WitnessedSize, res.WitnessedRoot = wcp.Size, wcp.Root
	}

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
		headSeq   int64
		headHash  []byte
		headRange []byte
		snapshot  string
		now       time.Time
		legacy    int64
	)
	if err := tx.QueryRow(ctx, "SELECT pg_export_snapshot(), clock_timestamp()").Scan(&snapshot, &now); err != nil {
		return nil, fmt.Errorf("ledger: verify: export snapshot: %w", err)
	}
	if err := tx.QueryRow(ctx, "SELECT seq, hash, tree_range FROM head").Scan(&headSeq, &headHash, &headRange); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			res.Finding, res.Problem, res.FirstBrokenSeq = "head", "the head row is missing", 1
			return res, nil
		}
		return nil, fmt.Errorf("ledger: verify: read head: %w", err)
	}
	res.HeadHash = headHash
	if err := tx.QueryRow(ctx, "SELECT through_seq FROM legacy").Scan(&legacy); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			res.Finding, res.Problem, res.FirstBrokenSeq = "head", "the legacy row is missing", 1
			return res, nil
		}
		return nil, fmt.Errorf("ledger: verify: read legacy: %w", err)
	}
	cps, err := loadCheckpoints(ctx, tx, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("ledger: verify: read checkpoints: %w", err)
	}
	var (
		pruneSeq   int64
		pruneHash  []byte
		pruneRange []byte
	)
	if err := tx.QueryRow(ctx, "SELECT up_to_seq, hash, tree_range FROM prunes ORDER BY up_to_seq DESC LIMIT 1").Scan(&pruneSeq, &pruneHash, &pruneRange); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("ledger: verify: read prunes: %w", err)
	}
	res.PrunedThroughSeq = pruneSeq

	// Signatures first: they need no entry. A bad one is a problem at its sequence.
	var sigProblem *problem
	valid := make(map[int64]*ledgerv1.Checkpoint, len(cps)) // legacy: by entry seq
	var treeCPs []*TreeCheckpoint                           // by size, ascending
	var lastValid int64
	for _, c := range cps {
		var err error
		pub := s.trustedKey(c.GetKeyId())
		var tc *TreeCheckpoint
		switch {
		case pub == nil:
			err = fmt.Errorf("checkpoint %d is signed by key %s, which this ledger does not trust (trusted: %s)", c.Seq, c.KeyId, s.trustedIDs())
		case c.Note != "":
			if err = VerifyCheckpoint(pub, c); err == nil {
				tc, err = OpenCheckpoint([]byte(c.Note), s.cfg.Origin, pub)
			}
		case c.Seq > legacy:
			err = fmt.Errorf("checkpoint %d is a legacy chain checkpoint beyond the legacy prefix (entries 1..%d)", c.Seq, legacy)
		default:
			err = VerifyCheckpoint(pub, c)
		}
		if err != nil {
			if sigProblem == nil {
				sigProblem = &problem{seq: c.Seq, msg: err.Error(), finding: "checkpoint"}
			}
			continue
		}
		if tc != nil {
			treeCPs = append(treeCPs, tc)
		} else {
			valid[c.Seq] = c
		}
		lastValid = c.Seq
	}

	prefix := rangeFactory.NewEmptyRange(0)
	prev, last := genesis, int64(0)
	if pruneSeq > 0 {
		// Entries 1..pruneSeq were archived and pruned: the rest hangs off the signed
		// checkpoint at pruneSeq, which must be older than the retention period.
		var (
			at     time.Time
			anchor []byte
			msg    string
		)
		if c := valid[pruneSeq]; c != nil {
			at, anchor = c.SignedAt.AsTime(), pruneHash
			if !bytes.Equal(c.HeadHash, pruneHash) {
				msg = fmt.Sprintf("entries 1..%d are marked pruned with hash %s, but the signed checkpoint at %d says %s", pruneSeq, short(pruneHash), pruneSeq, short(c.HeadHash))
			}
		}
		for _, tc := range treeCPs {
			if tc.Size == pruneSeq {
				at, anchor = tc.SignedAt, tc.Root
			}
		}
		var pr *compact.Range
		if pruneRange != nil {
			if pr, err = decodeRange(pruneSeq, pruneRange); err != nil {
				msg = fmt.Sprintf("entries 1..%d are marked pruned, but the prune's tree range is unreadable: %v", pruneSeq, err)
			}
		}
		switch {
		case msg != "":
		case anchor == nil:
			msg = fmt.Sprintf("entries 1..%d are marked pruned, but no valid signed checkpoint at %d anchors the rest of the ledger", pruneSeq, pruneSeq)
		case pr == nil && pruneSeq > legacy:
			msg = fmt.Sprintf("entries 1..%d are marked pruned without their tree range", pruneSeq)
		case pr != nil && pruneSeq > legacy && !bytes.Equal(rootOf(pr), anchor):
			msg = fmt.Sprintf("entries 1..%d are marked pruned with a tree of root %s, but the signed checkpoint at %d says %s", pruneSeq, short(rootOf(pr)), pruneSeq, short(anchor))
		case at.After(now.Add(-s.cfg.Retention + s.cfg.CheckpointGrace)):
			msg = fmt.Sprintf("entries 1..%d are marked pruned, but checkpoint %d was signed %s, within the retention period (%s): history was deleted",
				pruneSeq, pruneSeq, at.Format(time.RFC3339), s.cfg.Retention)
		}
		if msg != "" {
			res.FirstBrokenSeq, res.Problem, res.Finding = 1, msg, "truncation"
			return res, nil
		}
		if pr == nil {
			pr = rangeFactory.NewEmptyRange(uint64(pruneSeq)) // a legacy ledger pruned before the tree: the tree starts after it
		}
		prefix, prev, last = pr, pruneHash, pruneSeq
	}
	// The sizes whose root is needed, and the nodes of the consistency proof.
	snap := map[int64]bool{headSeq: true}
	for _, tc := range treeCPs {
		snap[tc.Size] = true
	}
	var (
		proofNodes proof.Nodes
		wantNodes  map[compact.NodeID][]byte
		nodesMu    sync.Mutex
	)
	if wcp != nil {
		snap[wcp.Size] = true
		if wcp.Size > 0 && wcp.Size < headSeq && prefix.Begin() == 0 {
			if proofNodes, err = proof.Consistency(uint64(wcp.Size), uint64(headSeq)); err == nil {
				wantNodes = make(map[compact.NodeID][]byte, len(proofNodes.IDs))
				for _, id := range proofNodes.IDs {
					wantNodes[id] = nil
				}
				// After a prune, the pruned prefix's nodes are its compact range.
				for i, id := range compact.RangeNodes(0, prefix.End(), nil) {
					if _, ok := wantNodes[id]; ok {
						wantNodes[id] = prefix.Hashes()[i]
					}
				}
			}
		}
	}
	var visit compact.VisitFn
	if wantNodes != nil {
		visit = func(id compact.NodeID, h []byte) {
			nodesMu.Lock()
			if _, ok := wantNodes[id]; ok {
				wantNodes[id] = bytes.Clone(h)
			}
			nodesMu.Unlock()
		}
	}
	var stale int64
	if len(treeCPs) > 0 {
		stale = treeCPs[len(treeCPs)-1].Size
	}
	v := &verifier{
		cps: valid, coveredTo: max(lastValid, stale), every: s.cfg.CheckpointEvery, legacy: legacy, snap: snap, visit: visit,
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
		res.Ok, res.FirstBrokenSeq, res.Problem, res.Finding = false, p.seq, p.msg, p.finding
		return res, nil
	}
	roots := map[int64][]byte{0: emptyRoot}
	for _, r := range results {
		if r.n == 0 {
			continue
		}
		if r.first != last+1 {
			return broken(&problem{last + 1, fmt.Sprintf("entry %d is missing: the entry after %d is %d", last+1, last, r.first), "missing"})
		}
		if r.first <= legacy && !bytes.Equal(r.firstPrev, prev) {
			return broken(&problem{r.first, fmt.Sprintf("entry %d: prev_hash %s does not match the hash of entry %d (%s)", r.first, short(r.firstPrev), last, short(prev)), "content"})
		}
		res.EntriesChecked += r.checked
		res.CheckpointsChecked += r.cpChecked
		for size, pr := range r.snaps {
			full := cloneRange(prefix)
			if err := full.AppendRange(pr, nil); err == nil && full.Begin() == 0 {
				roots[size] = rootOf(full)
			}
		}
		if r.rng != nil {
			if err := prefix.AppendRange(r.rng, visit); err != nil {
				return nil, fmt.Errorf("ledger: verify: merge entries %d..%d: %w", r.first, r.last, err)
			}
		}
		if r.prob != nil {
			return broken(r.prob)
		}
		prev, last = r.lastHash, r.last
	}
	res.TreeSize = last
	var root []byte
	if prefix.Begin() == 0 {
		root = rootOf(prefix)
	}
	switch {
	case last < headSeq:
		return broken(&problem{last + 1, fmt.Sprintf("the entries end at %d but the head is at %d: %s missing: the tail was cut", last, headSeq, span(last+1, headSeq, "is", "are")), "truncation"})
	case last > headSeq:
		return broken(&problem{headSeq + 1, fmt.Sprintf("%s beyond the head (seq %d): not appended by the ledger", span(headSeq+1, last, "lies", "lie"), headSeq), "beyond-head"})
	case headRange == nil && headSeq <= legacy && !bytes.Equal(headHash, prev):
		return broken(&problem{max(headSeq, 1), fmt.Sprintf("the head hash %s does not match the hash of entry %d (%s)", short(headHash), last, short(prev)), "content"})
	case headRange != nil && root != nil && !bytes.Equal(headHash, root):
		return broken(&problem{max(headSeq, 1), fmt.Sprintf("the head's root %s does not match the root of the tree of the entries (%s)", short(headHash), short(root)), "fork"})
	case lastValid > last:
		return broken(&problem{last + 1, fmt.Sprintf("signed checkpoint %d covers entries the database no longer has (they end at %d): entries were removed (truncation)", lastValid, last), "truncation"})
	}
	var good int64 = pruneSeq
	for _, tc := range treeCPs {
		got := roots[tc.Size]
		if got == nil {
			continue // within the pruned prefix
		}
		if !bytes.Equal(got, tc.Root) {
			return broken(&problem{good + 1, fmt.Sprintf("the database's tree of the first %d entries has root %s, but the checkpoint of %d entries signed %s says %s: history was rewritten in entries %d..%d",
				tc.Size, short(got), tc.Size, tc.SignedAt.Format(time.RFC3339), short(tc.Root), good+1, tc.Size), "fork"})
		}
		res.CheckpointsChecked++
		good = tc.Size
	}
	if sigProblem != nil {
		return broken(sigProblem)
	}
	if wcp != nil {
		switch got := roots[wcp.Size]; {
		case wcp.Size > last:
			newest := int64(0)
			if len(treeCPs) > 0 {
				newest = treeCPs[len(treeCPs)-1].Size
			}
			return broken(&problem{last + 1, fmt.Sprintf("the witness (%s) holds a checkpoint of %d entries (root %s, signed %s), but the database ends at entry %d (root %s) and its newest checkpoint is at %d: an older state of the database was restored, or its tail was cut together with its checkpoints and head",
				res.WitnessedFrom, wcp.Size, short(wcp.Root), wcp.SignedAt.Format(time.RFC3339), last, short(root), newest), "rollback"})
		case got != nil && !bytes.Equal(got, wcp.Root):
			return broken(&problem{good + 1, fmt.Sprintf("the witness (%s) holds a checkpoint of %d entries with root %s (signed %s), but the database's tree of the first %d entries has root %s: history was rewritten in entries %d..%d",
				res.WitnessedFrom, wcp.Size, short(wcp.Root), wcp.SignedAt.Format(time.RFC3339), wcp.Size, short(got), min(good, wcp.Size)+1, wcp.Size), "fork"})
		}
		complete := wantNodes != nil
		for _, h := range wantNodes {
			complete = complete && h != nil // a node inside a pruned prefix: no proof
		}
		if complete {
			hs := make([][]byte, len(proofNodes.IDs))
			for i, id := range proofNodes.IDs {
				hs[i] = wantNodes[id]
			}
			p, err := proofNodes.Rehash(hs, hasher.HashChildren)
			if err != nil {
				return nil, fmt.Errorf("ledger: verify: consistency proof: %w", err)
			}
			if err := VerifyConsistency(wcp.Size, last, p, wcp.Root, root); err != nil {
				return nil, fmt.Errorf("ledger: verify: consistency proof does not verify: %w", err)
			}
			res.ConsistencyProof = p
		}
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
	seq     int64
	msg     string
	finding string
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
	legacy      int64 // entries 1..legacy are the old hash chain
	snap        map[int64]bool
	visit       compact.VisitFn
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
	rng             *compact.Range           // the page's leaves
	slab            []byte                   // leaf hashes the range may keep
	snaps           map[int64]*compact.Range // the page's range at sizes in v.snap
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
			if l < 0 { // NULL: only prev_hash may be, for tree leaves
				fields[i] = nil
				continue
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

// row checks one entry: link (legacy), content hash, legacy checkpoint, coverage; and adds
// its leaf to the page's tree range.
func (r *pageResult) row(f *[verifyFields][]byte) {
	prevHash, hash := f[0], f[15]
	seq := int64(binary.BigEndian.Uint64(f[1]))
	legacy := seq <= r.v.legacy
	if r.n == 0 {
		r.first = seq
		r.firstPrev = slices.Clone(prevHash)
		r.rng = rangeFactory.NewEmptyRange(uint64(seq - 1))
	} else {
		if seq != r.last+1 {
			r.prob = &problem{r.last + 1, fmt.Sprintf("entry %d is missing: the entry after %d is %d", r.last+1, r.last, seq), "missing"}
			return
		}
		if legacy && !bytes.Equal(prevHash, r.lastHash) {
			r.prob = &problem{seq, fmt.Sprintf("entry %d: prev_hash %s does not match the hash of entry %d (%s)", seq, short(prevHash), r.last, short(r.lastHash)), "content"}
			return
		}
	}
	if !legacy && prevHash != nil {
		r.prob = &problem{seq, fmt.Sprintf("entry %d has a prev_hash, but entries after %d are tree leaves without one", seq, r.v.legacy), "content"}
		return
	}
	r.n++
	var b []byte
	if legacy {
		b = append(r.hin[:0], prevHash...)
	} else {
		b = append(r.hin[:0], rfc6962.RFC6962LeafHashPrefix)
	}
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
		r.prob = &problem{seq, fmt.Sprintf("entry %d: headers are not a map of string lists: %v", seq, err), "content"}
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
		r.prob = &problem{seq, fmt.Sprintf("entry %d: stored hash %s does not match its content (computed %s)", seq, short(hash), short(sum[:])), "content"}
		return
	}
	if c := r.v.cps[seq]; c != nil {
		if !bytes.Equal(c.HeadHash, hash) {
			r.prob = &problem{seq, fmt.Sprintf("entry %d does not match signed checkpoint %d (signed %s, hash %s, entry hash %s): the chain was rewritten",
				seq, c.Seq, c.SignedAt.AsTime().Format(time.RFC3339), short(c.HeadHash), short(hash)), "fork"}
			return
		}
		r.cpChecked++
	}
	if seq > r.v.coveredTo && recordedAt < r.v.staleBefore && string(f[4]) != checkpointType {
		r.prob = &problem{seq, fmt.Sprintf("entry %d, recorded %s, is covered by no signed checkpoint (the last one is at %d; one is signed every %d entries or within %s): checkpoints are missing",
			seq, time.UnixMicro(recordedAt).UTC().Format(time.RFC3339), r.v.coveredTo, r.v.every, r.v.grace), "stale"}
		return
	}
	// The range keeps some leaves: copy them out of the COPY buffer, into one slab per page.
	if len(r.slab)+HashSize > cap(r.slab) {
		r.slab = make([]byte, 0, 1024*HashSize)
	}
	r.slab = append(r.slab, hash...)
	if err := r.rng.Append(r.slab[len(r.slab)-HashSize:len(r.slab):len(r.slab)], r.v.visit); err != nil {
		r.prob = &problem{seq, err.Error(), "content"}
		return
	}
	if r.v.snap[seq] {
		if r.snaps == nil {
			r.snaps = map[int64]*compact.Range{}
		}
		r.snaps[seq] = cloneRange(r.rng)
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
