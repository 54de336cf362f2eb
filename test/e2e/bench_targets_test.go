package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/webhook"
)

// BenchmarkMassTermination terminates 10,000 leavers with 5 accounts each (50,000 accounts)
// at once, on all four services in one process (embedded NATS fsyncing every write, as
// `tenure dev` does; a local PostgreSQL). The targets are 5 webhook connectors (default
// policy: no rate limit, 4 operations at once each) against an HTTP account store in this
// process that verifies every request's signature: targets that can take it, so the figure
// is tenure's own throughput. Each disable is a few calls: revoke sessions (and
// credentials), disable, get (the read-back).
//
// Setup, not timed: the 50,000 accounts are seeded directly into the store and into the
// provisioner's links table (COPY, the rows reconciliation's LinkAccount writes), since the
// joiner path would take far longer than the measurement. Timed: from the first signed
// termination webhook (posted by 32 concurrent senders) until the last case completed
// (every account disabled and read back).
//
// TENURE_BENCH_MASS_LEAVERS sets the number of leavers (default 10000);
// TENURE_BENCH_NATS_SYNC=interval uses JetStream's default fsync interval instead. For
// diagnosis: TENURE_BENCH_MASS_NO_ACCOUNTS=1 (leavers without accounts: opening cases
// alone), TENURE_BENCH_SAMPLE_PG=1 (what PostgreSQL was busy with),
// TENURE_BENCH_PROVISIONER_POOL=N (the provisioner's connection pool size).
func BenchmarkMassTermination(b *testing.B) {
	leavers := envInt("TENURE_BENCH_MASS_LEAVERS", 10000)
	perLeaver := 5
	if os.Getenv("TENURE_BENCH_MASS_NO_ACCOUNTS") == "1" {
		// For diagnosis: leavers without accounts measure opening (and at once completing)
		// cases alone, without any disable.
		perLeaver = 0
	}
	store := newAccountStore(b)
	var conns strings.Builder
	conns.WriteString("connectors:\n")
	var systems strings.Builder
	systems.WriteString("systems:\n")
	for i := 0; i < 5; i++ {
		fmt.Fprintf(&conns, "  - name: app%d\n    type: webhook\n    config: {url: %q, secret: %q}\n", i, store.URL, store.Secret)
		fmt.Fprintf(&systems, "  - {name: app%d, holds_ephi: false, connector: app%d}\n", i, i)
	}
	env := startStack(b, stackOptions{Policy: systems.String() + "packages: []\nroles: []\n", Connectors: conns.String(),
		NATSSyncAlways: os.Getenv("TENURE_BENCH_NATS_SYNC") != "interval", Log: quietLogger()})
	fmt.Printf("machine: %s/%s, %d CPUs, %s\n", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), cpuModel())
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, env.AdminURL)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close(ctx)

	var target atomic.Int64
	completed, allDone := countTo(b, env.NATS, "tenure.case.completed.>", &target)
	// When the last case opened shows whether opening cases (the provisioner's event
	// consumer) or working the disables is what takes the time.
	opened, allOpened := countTo(b, env.NATS, "tenure.case.opened.>", &target)
	// When the last termination reached JetStream shows whether the intake keeps up.
	published, allPublished := countTo(b, env.NATS, "tenure.hr.leaver.>", &target)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	key, _ := webhook.ParseSecret(env.HRSecret)

	for iter := 0; iter < b.N; iter++ {
		b.StopTimer()
		workers := make([]string, leavers)
		var rows [][]any
		var users []string
		for i := range workers {
			workers[i] = fmt.Sprintf("m%d-%d", iter, i)
			for j := 0; j < perLeaver; j++ {
				u := fmt.Sprintf("%s.a%d", workers[i], j)
				users = append(users, u)
				rows = append(rows, []any{"lk-" + u, workers[i], fmt.Sprintf("app%d", j), u, "id-" + u, "reconciled", "enabled", "enabled", int64(1)})
			}
		}
		store.Seed(users...)
		if _, err := admin.CopyFrom(ctx, pgx.Identifier{"provisioner", "links"},
			[]string{"link_id", "worker_id", "connector", "username", "account_id", "origin", "desired_state", "observed_state", "observed_generation"},
			pgx.CopyFromRows(rows)); err != nil {
			b.Fatal(err)
		}
		completed.Store(0)
		opened.Store(0)
		published.Store(0)
		target.Store(int64(leavers))
		stopSampler := samplePostgres(b, env.AdminURL)
		msgs0 := streamMsgs(b, env.NATS)
		b.StartTimer()
		start := time.Now()
		var next atomic.Int64
		var wg sync.WaitGroup
		var sendErr atomic.Value
		for g := 0; g < 32; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= leavers {
						return
					}
					if err := postSigned(client, env.Hook, key, "t-"+workers[i], hrEvent("termination", workers[i], "", "")); err != nil {
						sendErr.Store(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		accepted := time.Since(start)
		if err, _ := sendErr.Load().(error); err != nil {
			b.Fatal(err)
		}
		var end time.Time
		select {
		case end = <-allDone:
		case <-time.After(30 * time.Minute):
			b.Fatalf("%d of %d cases completed after 30 minutes", completed.Load(), leavers)
		}
		b.StopTimer()
		stopSampler()
		total := end.Sub(start)
		lastPublished := arrived(b, allPublished, published, leavers, "terminations on JetStream").Sub(start)
		lastOpened := arrived(b, allOpened, opened, leavers, "case openings").Sub(start)
		// Every account in the target is disabled.
		for _, u := range users {
			if st := store.State(u); st != "disabled" {
				b.Fatalf("account %s is %q after every case completed", u, st)
			}
		}
		msgsPerLeaver := float64(streamMsgs(b, env.NATS)-msgs0) / float64(leavers)
		b.ReportMetric(total.Seconds(), "all-verified-s")
		b.ReportMetric(float64(len(users))/total.Seconds(), "disables/s")
		b.ReportMetric(accepted.Seconds(), "accept-all-s")
		b.ReportMetric(lastPublished.Seconds(), "all-published-s")
		b.ReportMetric(lastOpened.Seconds(), "all-opened-s")
		fmt.Printf("%d leavers × %d accounts: all verified in %.1f s (%.0f disables/s); all terminations accepted in %.1f s, published in %.1f s, all cases opened in %.1f s (%.0f cases/s); %.1f JetStream messages per leaver\n",
			leavers, perLeaver, total.Seconds(), float64(len(users))/total.Seconds(), accepted.Seconds(), lastPublished.Seconds(), lastOpened.Seconds(),
			float64(leavers)/lastOpened.Seconds(), msgsPerLeaver)
	}
}

// countTo counts the messages on subject and sends the time on the channel when the count
// reaches target (reset the counter between iterations).
func countTo(b *testing.B, nc *nats.Conn, subject string, target *atomic.Int64) (*atomic.Int64, chan time.Time) {
	var n atomic.Int64
	at := make(chan time.Time, 1)
	sub, err := nc.Subscribe(subject, func(*nats.Msg) {
		if n.Add(1) == target.Load() {
			at <- time.Now()
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sub.Unsubscribe() })
	return &n, at
}

// arrived returns when countTo's count reached want, which it must have by now (every case
// completed): it waits 10 s for the subscription to catch up, then fails.
func arrived(b *testing.B, at <-chan time.Time, n *atomic.Int64, want int, what string) time.Time {
	select {
	case t := <-at:
		return t
	case <-time.After(10 * time.Second):
		b.Fatalf("%d of %d %s seen", n.Load(), want, what)
		return time.Time{}
	}
}

// BenchmarkRateLimitedTarget disables 300 accounts (100 leavers × 3) in one webhook target
// whose policy allows 50 calls per second (burst 1, 8 operations at once), and reports the
// rate the target actually saw, between its first and last call, as a percentage of the
// allowed rate. TENURE_BENCH_RATE sets the rate (default 50).
func BenchmarkRateLimitedTarget(b *testing.B) {
	rate := envInt("TENURE_BENCH_RATE", 50)
	const leavers, perLeaver = 100, 3
	store := newAccountStore(b)
	env := startStack(b, stackOptions{
		Policy: "systems:\n  - {name: limited, holds_ephi: false, connector: limited}\npackages: []\nroles: []\n",
		Connectors: fmt.Sprintf("connectors:\n  - name: limited\n    type: webhook\n    config: {url: %q, secret: %q}\n    policy: {rate: %d, burst: 1, concurrency: 8}\n",
			store.URL, store.Secret, rate),
		Log: quietLogger()})
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, env.AdminURL)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close(ctx)
	var completed atomic.Int64
	allDone := make(chan struct{}, 1)
	sub, err := env.NATS.Subscribe("tenure.case.completed.>", func(m *nats.Msg) {
		if completed.Add(1) == leavers {
			allDone <- struct{}{}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	key, _ := webhook.ParseSecret(env.HRSecret)
	for iter := 0; iter < b.N; iter++ {
		b.StopTimer()
		var rows [][]any
		var users, workers []string
		for i := 0; i < leavers; i++ {
			w := fmt.Sprintf("r%d-%d", iter, i)
			workers = append(workers, w)
			for j := 0; j < perLeaver; j++ {
				u := fmt.Sprintf("%s.a%d", w, j)
				users = append(users, u)
				rows = append(rows, []any{"lk-" + u, w, "limited", u, "id-" + u, "reconciled", "enabled", "enabled", int64(1)})
			}
		}
		store.Seed(users...)
		if _, err := admin.CopyFrom(ctx, pgx.Identifier{"provisioner", "links"},
			[]string{"link_id", "worker_id", "connector", "username", "account_id", "origin", "desired_state", "observed_state", "observed_generation"},
			pgx.CopyFromRows(rows)); err != nil {
			b.Fatal(err)
		}
		completed.Store(0)
		store.Record(true)
		b.StartTimer()
		for _, w := range workers {
			if err := postSigned(http.DefaultClient, env.Hook, key, "t-"+w, hrEvent("termination", w, "", "")); err != nil {
				b.Fatal(err)
			}
		}
		select {
		case <-allDone:
		case <-time.After(10 * time.Minute):
			b.Fatalf("%d of %d cases completed after 10 minutes", completed.Load(), leavers)
		}
		b.StopTimer()
		calls := store.Calls()
		store.Record(false)
		span := calls[len(calls)-1].At.Sub(calls[0].At)
		achieved := float64(len(calls)-1) / span.Seconds()
		b.ReportMetric(achieved, "calls/s")
		b.ReportMetric(100*achieved/float64(rate), "%-of-allowed")
		fmt.Printf("rate-limited target (rate %d/s, burst 1, concurrency 8): %d calls in %.2f s = %.1f calls/s, %.1f%% of the allowed rate\n",
			rate, len(calls), span.Seconds(), achieved, 100*achieved/float64(rate))
	}
}

// samplePostgres, with TENURE_BENCH_SAMPLE_PG=1, samples pg_stat_activity every 10 ms
// until stopped and then prints which statements the database was busy with (a sampling
// profile of the server side, which a Go CPU profile does not see).
func samplePostgres(b *testing.B, adminURL string) (stop func()) {
	if os.Getenv("TENURE_BENCH_SAMPLE_PG") != "1" {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	counts := map[string]int{}
	samples := 0
	go func() {
		defer close(done)
		conn, err := pgx.Connect(context.Background(), adminURL)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			rows, err := conn.Query(ctx, `SELECT usename::text, coalesce(wait_event_type, 'CPU'), regexp_replace(left(query, 110), '\s+', ' ', 'g')
				FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND datname = current_database()`)
			if err != nil {
				continue
			}
			samples++
			for rows.Next() {
				var u, w, q string
				if rows.Scan(&u, &w, &q) == nil {
					counts[u+" ["+w+"] "+q]++
				}
			}
			rows.Close()
		}
	}()
	return func() {
		cancel()
		<-done
		type kv struct {
			k string
			n int
		}
		var l []kv
		for k, n := range counts {
			l = append(l, kv{k, n})
		}
		sort.Slice(l, func(i, j int) bool { return l[i].n > l[j].n })
		fmt.Printf("pg_stat_activity: %d samples; busy backends per sample by statement:\n", samples)
		for i := 0; i < len(l) && i < 15; i++ {
			fmt.Printf("  %5.2f  %s\n", float64(l[i].n)/float64(max(samples, 1)), l[i].k)
		}
	}
}

// streamMsgs is the number of messages TENURE_EVENTS holds.
func streamMsgs(b *testing.B, nc *nats.Conn) uint64 {
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	st, err := js.Stream(context.Background(), "TENURE_EVENTS")
	if err != nil {
		b.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return info.State.Msgs
}

// postSigned posts a signed HR webhook and wants 202.
func postSigned(c *http.Client, url string, key []byte, id string, body []byte) error {
	now := time.Now()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(webhook.HeaderID, id)
	req.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	req.Header.Set(webhook.HeaderSignature, webhook.Sign(key, id, now, body))
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// Read to the end so the connection is reused, as an HRIS's client would.
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("webhook %s: %s %s", id, resp.Status, buf.String())
	}
	return nil
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
