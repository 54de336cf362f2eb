package ledger

import (
	"context"
	"fmt"
	"testing"
	"time"

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
