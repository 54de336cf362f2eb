package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/tenure-dev/tenure/cmd/app"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

const (
	setAccountDisabled = "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
	setSessionRevoked  = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
)

// setSink is a push receiver (RFC 8935) that records each SET's claims and arrival time.
// Signatures are checked by services/ledger/ssf's receiver test; here the system is wired.
type setSink struct {
	mu      sync.Mutex
	claims  []map[string]any
	arrived map[string]time.Time // by txn (the revocation id)
	notify  chan struct{}
}

func newSetSink() *setSink {
	return &setSink{arrived: map[string]time.Time{}, notify: make(chan struct{}, 1)}
}

func (s *setSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	b, _ := io.ReadAll(r.Body)
	parts := strings.Split(string(b), ".")
	var c map[string]any
	if len(parts) != 3 {
		http.Error(w, `{"err":"invalid_request"}`, http.StatusBadRequest)
		return
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(raw, &c) != nil {
		http.Error(w, `{"err":"invalid_request"}`, http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.claims = append(s.claims, c)
	if txn, _ := c["txn"].(string); txn != "" {
		s.arrived[txn] = at
	}
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
	w.WriteHeader(http.StatusAccepted)
}

func (s *setSink) count(eventType, email string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.claims {
		ev, _ := c["events"].(map[string]any)
		sub, _ := c["sub_id"].(map[string]any)
		if user, ok := sub["user"].(map[string]any); ok && sub["format"] == "complex" {
			sub = user // the account's system is the complex subject's application
		}
		if _, ok := ev[eventType]; ok && sub["email"] == email {
			n++
		}
	}
	return n
}

// createPushStream registers sink as a push receiver of d's transmitter, as a security team.
func createPushStream(t testing.TB, d *app.Dev, url string) string {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"delivery": map[string]string{"method": "urn:ietf:rfc:8935", "endpoint_url": url}})
	req, _ := http.NewRequest("POST", d.SSF.Issuer()+"/ssf/streams", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+d.Secrets.Tokens["security"])
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create SSF stream: %d %v", resp.StatusCode, out)
	}
	return out["stream_id"].(string)
}

// verifiedEnabled counts the accounts read back enabled at their current generation.
func verifiedEnabled(accounts []*provisionerv1.Account) int {
	n := 0
	for _, a := range accounts {
		if a.ObservedState == eventsv1.AccountState_ACCOUNT_STATE_ENABLED && a.ObservedGeneration == a.Generation {
			n++
		}
	}
	return n
}

func waitAccountsEnabled(t testing.TB, d *app.Dev, worker string, want int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err := d.Provisioner.ListAccounts(context.Background(), &provisionerv1.ListAccountsRequest{WorkerId: worker})
		n := 0
		if err == nil {
			n = verifiedEnabled(res.Accounts)
		}
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %s has %d of %d accounts enabled", worker, n, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A leaver in tenure dev reaches a security team three ways: an SSF push stream (SETs for
// each disabled account and revoked session), the ledger's WatchRevocations through
// `tenurectl revocations watch`, and the SSF discovery document that `tenure dev` prints.
func TestDevRevocationsReachSecurityTeams(t *testing.T) {
	ctx := context.Background()
	d, err := app.StartDev(ctx, app.DevOptions{DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NATSPort: -1, Log: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop() })
	var printed bytes.Buffer
	d.PrintEndpoints(&printed)
	if !strings.Contains(printed.String(), "SSF        "+d.SSF.URL()) {
		t.Errorf("tenure dev does not print the SSF URL:\n%s", printed.String())
	}
	resp, err := http.Get(d.SSF.URL())
	if err != nil {
		t.Fatal(err)
	}
	var meta map[string]any
	json.NewDecoder(resp.Body).Decode(&meta)
	resp.Body.Close()
	if resp.StatusCode != 200 || meta["issuer"] != d.SSF.Issuer() || meta["jwks_uri"] != d.SSF.Issuer()+"/ssf/jwks.json" {
		t.Fatalf("ssf-configuration: %d %v", resp.StatusCode, meta)
	}

	sink := newSetSink()
	srv := httptest.NewServer(sink)
	t.Cleanup(srv.Close)
	createPushStream(t, d, srv.URL)

	hook := "http://" + d.HTTPAddr + "/webhooks/" + d.Secrets.WebhookSource
	worker, email := "w-rev-1", "ada.lovelace@clinic.example"
	if code, res := postWebhook(t, hook, d.Secrets.WebhookSecret, "hire-rev", hrEvent("hire", worker, "RN", email)); code != 202 {
		t.Fatalf("joiner: %d %v", code, res)
	}
	waitAccountsEnabled(t, d, worker, 4)
	if code, res := postWebhook(t, hook, d.Secrets.WebhookSecret, "term-rev", hrEvent("termination", worker, "", "")); code != 202 {
		t.Fatalf("termination: %d %v", code, res)
	}
	eventually(t, 30*time.Second, "an account-disabled and a session-revoked SET per account", func() error {
		if a, s := sink.count(setAccountDisabled, email), sink.count(setSessionRevoked, email); a != 4 || s != 4 {
			return fmt.Errorf("%d account-disabled, %d session-revoked SETs", a, s)
		}
		return nil
	})

	_, tenurectl := binaries(t)
	ctl := func(args ...string) string {
		t.Helper()
		args = append(args, "--addr", d.GRPCAddr, "--token", d.Secrets.Tokens["security"], "--plaintext")
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(cctx, tenurectl, args...).Output()
		if err != nil {
			t.Fatalf("tenurectl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := ctl("revocations", "watch", "--worker", worker, "--kind", "account_disabled", "--count", "4", "-o", "json")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("watch -o json printed %d lines:\n%s", len(lines), out)
	}
	var last int64
	systems := map[string]bool{}
	for _, l := range lines {
		var ev struct {
			Seq        string `json:"seq"`
			Revocation struct {
				Kind, WorkerID, System string
				Verified               bool
			} `json:"revocation"`
		}
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		seq, _ := strconv.ParseInt(ev.Seq, 10, 64)
		if seq <= last || ev.Revocation.Kind != "REVOCATION_KIND_ACCOUNT_DISABLED" || !ev.Revocation.Verified {
			t.Errorf("watch line: %s", l)
		}
		last = seq
		systems[ev.Revocation.System] = true
	}
	if len(systems) != 4 {
		t.Errorf("systems %v, want the 4 demo systems of an RN", systems)
	}
	// Resume after the last one: the case completion follows, and nothing before it.
	table := ctl("revocations", "watch", "--worker", worker, "--from-seq", strconv.FormatInt(last+1, 10), "--kind", "case_completed", "--count", "1")
	if !strings.HasPrefix(table, "SEQ ") || !strings.Contains(table, "case_completed") || strings.Contains(table, "account_disabled") {
		t.Errorf("watch table:\n%s", table)
	}
}

// BenchmarkRevocationSETLatency measures, on the embedded default, the time from a leaver's
// account being verified disabled (the occurred_at the provisioner stamps on the read-back)
// to the account-disabled SET arriving at a push receiver over HTTP: outbox relay, JetStream,
// the SSF transmitter's consumer, its PostgreSQL transaction, signing and the push. Leavers
// go one at a time, each with the 4 demo accounts of an RN. TENURE_BENCH_SSF_LEAVERS sets the
// number of leavers (default 50). Goal: p99 ≤ 100 ms.
func BenchmarkRevocationSETLatency(b *testing.B) {
	n := 50
	if v, err := strconv.Atoi(os.Getenv("TENURE_BENCH_SSF_LEAVERS")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	d, err := app.StartDev(ctx, app.DevOptions{DataDir: b.TempDir(), HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NATSPort: -1, Fast: true, Log: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Stop()
	sink := newSetSink()
	srv := httptest.NewServer(sink)
	defer srv.Close()
	createPushStream(b, d, srv.URL)

	var mu sync.Mutex
	verifiedAt := map[string]time.Time{} // revocation id → verified disabled
	nc, err := d.ConnectNATS("security") // the security team's user may subscribe to revocations
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.Subscribe("tenure.revocation.account_disabled.>", func(m *nats.Msg) {
		var r eventsv1.Revocation
		if proto.Unmarshal(m.Data, &r) == nil {
			mu.Lock()
			verifiedAt[r.RevocationId] = r.OccurredAt.AsTime()
			mu.Unlock()
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	hook := "http://" + d.HTTPAddr + "/webhooks/" + d.Secrets.WebhookSource

	for iter := 0; iter < b.N; iter++ {
		b.StopTimer()
		workers := make([]string, n)
		for i := range workers {
			workers[i] = fmt.Sprintf("s%d-%d", iter, i)
			if code, res := postWebhookB(b, hook, d.Secrets.WebhookSecret, "j-"+workers[i], hrEvent("hire", workers[i], "RN", workers[i]+"@clinic.example")); code != 202 {
				b.Fatalf("joiner %s: %d %v", workers[i], code, res)
			}
		}
		for _, w := range workers {
			waitAccountsEnabled(b, d, w, 4)
		}
		b.StartTimer()
		for _, w := range workers {
			if code, res := postWebhookB(b, hook, d.Secrets.WebhookSecret, "t-"+w, hrEvent("termination", w, "", "")); code != 202 {
				b.Fatalf("termination %s: %d %v", w, code, res)
			}
			deadline := time.After(60 * time.Second)
			for sink.count(setAccountDisabled, w+"@clinic.example") < 4 {
				select {
				case <-sink.notify:
				case <-time.After(50 * time.Millisecond):
				case <-deadline:
					b.Fatalf("%s: %d of 4 account-disabled SETs in 60s", w, sink.count(setAccountDisabled, w+"@clinic.example"))
				}
			}
		}
		b.StopTimer()
		var lat []time.Duration
		mu.Lock()
		sink.mu.Lock()
		for id, at := range verifiedAt {
			if arrived, ok := sink.arrived[id]; ok {
				lat = append(lat, arrived.Sub(at))
			}
		}
		clear(verifiedAt)
		clear(sink.arrived)
		sink.mu.Unlock()
		mu.Unlock()
		if len(lat) != 4*n {
			b.Fatalf("matched %d SETs to their revocations, want %d", len(lat), 4*n)
		}
		b.ReportMetric(ms(pct(lat, 50)), "set-p50-ms")
		b.ReportMetric(ms(pct(lat, 99)), "set-p99-ms")
		fmt.Printf("%d account disables: verified disabled → SET at push receiver p50 %.1f ms p99 %.1f ms (max %.1f ms)\n",
			len(lat), ms(pct(lat, 50)), ms(pct(lat, 99)), ms(pct(lat, 100)))
	}
}
