package ledger

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
)

// benchBatch is the number of events per benchmark op (one appender transaction's worth).
const benchBatch = 500

// BenchmarkAppend measures committed, chained appends per second.
//
//	direct:   the append transaction alone (batches of 500 entries, one appender).
//	consumer: the whole appender: a backlog of b.N×500 events in the stream is fetched,
//	          decoded, chained, committed and acked by one Service.
func BenchmarkAppend(b *testing.B) {
	b.Run("direct", func(b *testing.B) {
		s := newService(b, Config{}, newPool(b), nil)
		tmpl := sampleEntries(b, "tmpl", benchBatch)
		batch := make([]*entry, benchBatch)
		n := 0
		for b.Loop() {
			for i, e := range tmpl {
				c := *e
				c.MsgID = fmt.Sprintf("b-%d", n)
				n++
				batch[i] = &c
			}
			if _, err := s.appendEntries(context.Background(), batch); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "entries/s")
	})
	b.Run("consumer", func(b *testing.B) {
		ns := natstest.Start(b)
		pool := newPool(b)
		s := newService(b, Config{}, pool, ns.JS)
		total := b.N * benchBatch
		for i := range total {
			w := fmt.Sprintf("w%d", i%100)
			m := msg(b, fmt.Sprintf("e%d", i), events.Subject("tenure.hr", "joiner", w), w, t0, joiner(w))
			if _, err := ns.JS.PublishMsgAsync(m); err != nil {
				b.Fatal(err)
			}
			if i%2000 == 1999 {
				<-ns.JS.PublishAsyncComplete()
			}
		}
		<-ns.JS.PublishAsyncComplete()
		b.ResetTimer()
		run(b, s)
		for headSeq(b, pool) < int64(total) {
			time.Sleep(2 * time.Millisecond)
		}
		b.StopTimer()
		b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "entries/s")
	})
}

// BenchmarkVerify measures entries verified per second over a chain of 20,000 entries.
func BenchmarkVerify(b *testing.B) {
	const size = 20000
	s := newService(b, Config{}, newPool(b), nil)
	es := sampleEntries(b, "v", size)
	appendAll(b, s, es, benchBatch)
	var checked int64
	for b.Loop() {
		res, err := s.Verify(context.Background())
		if err != nil || !res.Ok {
			b.Fatalf("Verify = %v, %v", res, err)
		}
		checked += res.EntriesChecked
	}
	b.ReportMetric(float64(checked)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkVerify1M measures Verify over a tree of TENURE_LEDGER_BENCH_ENTRIES entries
// (default 1,000,000) with a signed checkpoint every 1,000. The tree is built once per test
// binary, fast: entries are hashed in Go and written with COPY as the superuser, as a
// restore would, rather than through the appender.
//
//	self:      the database against its own checkpoints (no witness);
//	witnessed: also against a witnessed checkpoint 1,000 entries behind the head, with the
//	           consistency proof from it (what `tenurectl ledger verify` asks for).
func BenchmarkVerify1M(b *testing.B) {
	size := 1_000_000
	if v := os.Getenv("TENURE_LEDGER_BENCH_ENTRIES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("TENURE_LEDGER_BENCH_ENTRIES=%q", v)
		}
		size = n
	}
	for _, mode := range []string{"self", "witnessed"} {
		b.Run(mode, func(b *testing.B) {
			s := bigChain(b, size)
			var witnessed []byte
			if mode == "witnessed" {
				if err := s.pool.QueryRow(context.Background(), "SELECT note FROM checkpoints WHERE seq < $1 ORDER BY seq DESC LIMIT 1", size).Scan(&witnessed); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			var checked int64
			for b.Loop() {
				res, err := s.VerifyAgainst(context.Background(), witnessed)
				if err != nil || !res.Ok || res.EntriesChecked != int64(size) || (witnessed != nil && len(res.ConsistencyProof) == 0) {
					b.Fatalf("Verify = %v, %v", res, err)
				}
				checked += res.EntriesChecked
			}
			b.ReportMetric(float64(checked)/b.Elapsed().Seconds(), "entries/s")
			b.ReportMetric(b.Elapsed().Seconds()/float64(checked)*1e6, "s/1M")
		})
	}
}

// BenchmarkInclusionProof measures what an auditor's offline check costs per cited entry
// of an evidence bundle: the entry's leaf hash from its content and its inclusion proof in a
// tree of 1,000,000 entries.
func BenchmarkInclusionProof(b *testing.B) {
	const size = 1_000_000
	tmpl := sampleEntries(b, "p", 3)
	leaves := make([][]byte, size)
	for i := range leaves {
		e := *tmpl[i%3]
		e.Seq = int64(i + 1)
		leaves[i] = leafHash(&e)
	}
	st := newNodeStore(leaves)
	root, err := st.root()
	if err != nil {
		b.Fatal(err)
	}
	const n = 1024
	proofs := make([][][]byte, n)
	seqs := make([]int64, n)
	for i := range proofs {
		seqs[i] = int64(i*977+1) % size
		if proofs[i], err = st.inclusion(seqs[i], size); err != nil {
			b.Fatal(err)
		}
	}
	i := 0
	for b.Loop() {
		k := i % n
		e := *tmpl[(seqs[k]-1)%3]
		e.Seq = seqs[k]
		if err := VerifyInclusion(seqs[k], size, leafHash(&e), proofs[k], root); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(i), "µs/entry")
}

var (
	bigOnce  sync.Once
	bigURL   string
	bigErr   error
	bigBuilt int
)

// bigChain returns a service over a database holding a valid chain of size entries.
func bigChain(b *testing.B, size int) *Service {
	bigOnce.Do(func() {
		start := time.Now()
		bigURL, bigErr = buildBigChain(b, size)
		bigBuilt = size
		b.Logf("built a chain of %d entries in %s", size, time.Since(start).Round(time.Millisecond))
	})
	if bigErr != nil {
		b.Fatal(bigErr)
	}
	if bigBuilt != size {
		b.Fatalf("chain built with %d entries, want %d", bigBuilt, size)
	}
	cfg := Config{}
	cfg.VerifyPageSize, _ = strconv.Atoi(os.Getenv("TENURE_LEDGER_BENCH_PAGE"))
	cfg.VerifyWorkers, _ = strconv.Atoi(os.Getenv("TENURE_LEDGER_BENCH_WORKERS"))
	return newService(b, cfg, connect(b, bigURL), nil)
}

func buildBigChain(b *testing.B, size int) (string, error) {
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, pgtest.AdminURL(b))
	if err != nil {
		return "", err
	}
	defer admin.Close(ctx)
	name := fmt.Sprintf("bench_verify_%d", os.Getpid())
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	url := pgtest.WithDatabase(pgtest.AdminURL(b), name)
	pool, err := pgstore.Connect(ctx, url, Schema)
	if err != nil {
		return "", err
	}
	defer pool.Close()
	s, err := New(ctx, Config{SigningKey: testKey}, Deps{Pool: pool})
	if err != nil {
		return "", err
	}
	tmpl := sampleEntries(b, "tmpl", 3)
	tree := rangeFactory.NewEmptyRange(0)
	recorded := time.Now().UTC().Truncate(time.Microsecond)
	const chunk = 20000
	rows := make([][]any, 0, chunk)
	var cps [][]any
	for i := 1; i <= size; i++ {
		e := *tmpl[i%3]
		e.Seq = int64(i)
		e.MsgID = "bench-" + strconv.Itoa(i)
		e.WorkerID = "w" + strconv.Itoa(i%5000)
		e.EventTime = dbTime(t0.Add(time.Duration(i) * time.Second))
		e.RecordedAt = recorded
		e.StreamSeq = int64(i)
		e.PrevHash = nil
		e.Hash = leafHash(&e)
		if err := tree.Append(e.Hash, nil); err != nil {
			return "", err
		}
		rows = append(rows, rowOf(&e))
		if i%1000 == 0 || i == size {
			root := rootOf(tree)
			note, err := signCheckpoint(s.signer, s.cfg.Origin, e.Seq, root, recorded)
			if err != nil {
				return "", err
			}
			sig, err := noteSignature(note)
			if err != nil {
				return "", err
			}
			cps = append(cps, []any{e.Seq, root, recorded, KeyID(s.PublicKey()), sig, string(note), encodeRange(tree)})
		}
		if len(rows) == chunk || i == size {
			if _, err := pool.CopyFrom(ctx, pgx.Identifier{"entries"}, entryColumns, pgx.CopyFromRows(rows)); err != nil {
				return "", err
			}
			rows = rows[:0]
		}
	}
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"checkpoints"}, []string{"seq", "head_hash", "signed_at", "key_id", "signature", "note", "tree_range"}, pgx.CopyFromRows(cps)); err != nil {
		return "", err
	}
	if _, err := pool.Exec(ctx, "UPDATE head SET seq = $1, hash = $2, tree_range = $3", size, rootOf(tree), encodeRange(tree)); err != nil {
		return "", err
	}
	if _, err := pool.Exec(ctx, "VACUUM ANALYZE entries"); err != nil {
		return "", err
	}
	return url, nil
}
