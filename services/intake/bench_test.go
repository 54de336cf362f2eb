package intake

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	"github.com/tenure-dev/tenure/pkg/webhook"
)

// BenchmarkWebhookAccept measures durable webhook accepts: signed canonical hires for
// distinct workers, posted concurrently over HTTP; each answer is 202 only after the receipt
// and registry rows are written, JetStream (file storage, fsync on every write, as in
// `tenure dev`) acknowledged the event and Postgres (fsync on) committed. It reports
// accepts/s and the accept latency p50/p99 seen by the sender.
//
//	go test -run '^$' -bench WebhookAccept -benchtime 2000x -count 3 ./services/intake/
//
// INTAKE_BENCH_NATS=cluster3 publishes to a 3-node in-process cluster with R3 streams and
// sync_interval always (deploy/nats/cluster.conf without TLS) instead of a single node.
// INTAKE_BENCH_PG=nosync uses the test cluster of pgtest (fsync off) instead of a durable one.
func BenchmarkWebhookAccept(b *testing.B) {
	ctx := context.Background()
	pool, err := pgstore.Connect(ctx, benchDatabase(b), Schema)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	js := benchJetStream(b)
	secret := webhook.NewSecret()
	key, _ := webhook.ParseSecret(secret)
	svc, err := New(ctx, Config{Sources: map[string]SourceConfig{"bench": {Secrets: []string{secret}}}},
		Deps{Pool: pool, JS: js, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(svc.Handler())
	b.Cleanup(srv.Close)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}}

	var n atomic.Int64
	var mu sync.Mutex
	lat := make([]time.Duration, 0, b.N)
	var failed atomic.Int64
	b.SetParallelism(8) // 8 × GOMAXPROCS concurrent senders, like an HRIS retrying a backlog
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		local := make([]time.Duration, 0, 256)
		for pb.Next() {
			i := n.Add(1)
			id := "bench_" + strconv.FormatInt(i, 10)
			body := fmt.Sprintf(`{"type":"hire","worker":{"worker_id":"W%d","worker_type":"employee","given_name":"Bench","family_name":"Worker","email":"w%d@clinic.example","job_code":"RN","department":"ICU"}}`, i, i)
			now := time.Now()
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/webhooks/bench", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(webhook.HeaderID, id)
			req.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
			req.Header.Set(webhook.HeaderSignature, webhook.Sign(key, id, now, []byte(body)))
			t0 := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				failed.Add(1)
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				failed.Add(1)
				continue
			}
			local = append(local, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, local...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d deliveries not accepted", f)
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[min(len(lat)-1, int(float64(len(lat))*p))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "accepts/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// benchSyncAlways: fsync every JetStream write (tenure dev's setting). INTAKE_BENCH_SYNC=interval
// measures a single node with the server's periodic fsync instead.
var benchSyncAlways = os.Getenv("INTAKE_BENCH_SYNC") != "interval"

// benchJetStream starts the NATS side chosen by INTAKE_BENCH_NATS and returns a JetStream
// with tenure's streams, ready for publishing.
func benchJetStream(b *testing.B) jetstream.JetStream {
	switch os.Getenv("INTAKE_BENCH_NATS") {
	case "", "single":
	case "cluster3":
		if !benchSyncAlways {
			b.Fatal("INTAKE_BENCH_NATS=cluster3 always uses sync_interval always, as deploy/nats/cluster.conf")
		}
		return natstest.StartCluster(b, 3).JS
	default:
		b.Fatalf("INTAKE_BENCH_NATS=%q: want single or cluster3", os.Getenv("INTAKE_BENCH_NATS"))
	}
	ns, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: b.TempDir(), SyncAlways: benchSyncAlways})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	if err := natsx.EnsureStreams(context.Background(), js, natsx.DefaultStreamOptions()); err != nil {
		b.Fatal(err)
	}
	return js
}

// benchDatabase returns the URL of an empty database. By default it starts its own PostgreSQL
// with fsync on, as an accept must be on disk; INTAKE_BENCH_PG=nosync takes a database from
// pgtest's cluster, which runs with fsync and synchronous_commit off.
func benchDatabase(b *testing.B) string {
	switch os.Getenv("INTAKE_BENCH_PG") {
	case "", "durable":
	case "nosync":
		return pgtest.NewDatabase(b)
	default:
		b.Fatalf("INTAKE_BENCH_PG=%q: want durable or nosync", os.Getenv("INTAKE_BENCH_PG"))
	}
	return pgtest.StartDurable(b)
}
