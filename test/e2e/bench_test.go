package e2e

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/cmd/app"
	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connectors/pgrole"
	"github.com/tenure-dev/tenure/pkg/natsx"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// BenchmarkLeaverFanout measures, on the embedded default (all four services in one process,
// embedded NATS with fsync on every write, a local PostgreSQL), leavers that each have 20
// linked accounts spread over the 5 demo targets: 4 accounts from the joiner's auto-approved
// packages and 16 found by reconciliation. Leavers are sent one at a time (closed loop), so
// the figures are latencies, not queueing:
//   - accept: signed termination webhook → 202 (stored and acknowledged by JetStream)
//   - case: webhook sent → leaver case completed (every account disabled and read back)
//
// TENURE_BENCH_LEAVERS sets the number of leavers (default 200).
func BenchmarkLeaverFanout(b *testing.B) {
	n := 200
	if v, err := strconv.Atoi(os.Getenv("TENURE_BENCH_LEAVERS")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	d, err := app.StartDev(ctx, app.DevOptions{DataDir: b.TempDir(), HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NATSPort: -1,
		Fast: true, Log: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Stop()
	fmt.Printf("machine: %s/%s, %d CPUs, %s\n", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), cpuModel())

	targetURL := strings.Replace(d.DatabaseURL, "postgres://postgres@", "postgres://tenure_target@", 1)
	targets := map[string]*pgrole.Connector{}
	for _, t := range app.DemoTargets {
		c, err := pgrole.New(ctx, pgrole.Config{URL: connector.SecretValue(targetURL), RolePrefix: t + "_"})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		targets[t] = c
	}
	hook := "http://" + d.HTTPAddr + "/webhooks/" + d.Secrets.WebhookSource
	prov := provisionerv1.NewProvisioningServiceClient(dial(b, d.GRPCAddr, d.Secrets.Tokens["operator"]))

	var mu sync.Mutex
	completed := map[string]chan time.Time{}
	// The embedded NATS lets only its users in, and no user holds a plain subscription on
	// case events: read them through an ordered consumer as the admin.
	nc, err := d.ConnectNATS("admin")
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	cons, err := js.OrderedConsumer(ctx, natsx.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"tenure.case.completed.>"}, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		b.Fatal(err)
	}
	sub, err := cons.Consume(func(m jetstream.Msg) {
		at := time.Now()
		worker := m.Subject()[len("tenure.case.completed."):]
		mu.Lock()
		ch := completed[worker]
		mu.Unlock()
		if ch != nil {
			select {
			case ch <- at:
			default:
			}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Stop()

	for iter := 0; iter < b.N; iter++ {
		b.StopTimer()
		workers := make([]string, n)
		for i := range workers {
			workers[i] = fmt.Sprintf("b%d-%d", iter, i)
			if code, res := postWebhookB(b, hook, d.Secrets.WebhookSecret, "j-"+workers[i], hrEvent("hire", workers[i], "RN", workers[i]+"@clinic.example")); code != 202 {
				b.Fatalf("joiner %s: %d %v", workers[i], code, res)
			}
		}
		// 16 more accounts per worker, as reconciliation would find them.
		for _, w := range workers {
			for i := 0; i < 16; i++ {
				t := app.DemoTargets[i%len(app.DemoTargets)]
				user := fmt.Sprintf("%s-x%d", w, i)
				if _, err := targets[t].CreateAccount(ctx, connector.AccountSpec{Username: user, WorkerID: w}); err != nil {
					b.Fatal(err)
				}
				linkFound(b, prov, w, "demo-"+t, user)
			}
		}
		waitJoinersProvisioned(b, d, workers)

		accept := make([]time.Duration, 0, n)
		caseDone := make([]time.Duration, 0, n)
		b.StartTimer()
		for _, w := range workers {
			ch := make(chan time.Time, 1)
			mu.Lock()
			completed[w] = ch
			mu.Unlock()
			start := time.Now()
			code, res := postWebhookB(b, hook, d.Secrets.WebhookSecret, "t-"+w, hrEvent("termination", w, "", ""))
			accepted := time.Now()
			if code != 202 {
				b.Fatalf("termination %s: %d %v", w, code, res)
			}
			select {
			case at := <-ch:
				accept = append(accept, accepted.Sub(start))
				caseDone = append(caseDone, at.Sub(start))
			case <-time.After(60 * time.Second):
				b.Fatalf("case of %s not completed in 60s", w)
			}
		}
		b.StopTimer()
		res, err := d.Provisioner.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: workers[0]})
		if err != nil || len(res.LeaverCase.Accounts) != 20 {
			b.Fatalf("case of %s covers %d accounts, want 20 (%v)", workers[0], len(res.GetLeaverCase().GetAccounts()), err)
		}
		b.ReportMetric(ms(pct(caseDone, 50)), "case-p50-ms")
		b.ReportMetric(ms(pct(caseDone, 99)), "case-p99-ms")
		b.ReportMetric(ms(pct(accept, 50)), "accept-p50-ms")
		b.ReportMetric(ms(pct(accept, 99)), "accept-p99-ms")
		fmt.Printf("%d leavers × 20 accounts over %d targets: case complete p50 %.1f ms p99 %.1f ms; webhook accept p50 %.2f ms p99 %.2f ms\n",
			n, len(app.DemoTargets), ms(pct(caseDone, 50)), ms(pct(caseDone, 99)), ms(pct(accept, 50)), ms(pct(accept, 99)))
	}
}

func waitJoinersProvisioned(b *testing.B, d *app.Dev, workers []string) {
	deadline := time.Now().Add(10 * time.Minute)
	for _, w := range workers {
		for {
			res, err := d.Provisioner.ListAccounts(context.Background(), &provisionerv1.ListAccountsRequest{WorkerId: w})
			ready := 0
			if err == nil {
				for _, a := range res.Accounts {
					if a.ObservedState == eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
						ready++
					}
				}
			}
			if ready == 20 {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("worker %s has %d of 20 accounts ready", w, ready)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func pct(d []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	return s[max(min(i, len(s))-1, 0)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
