package ssf_test

// A receiver that shares no code with the transmitter: it discovers the transmitter from its
// well-known document, fetches the JWKS over HTTP and validates every SET with a different
// JOSE library (lestrrat-go/jwx), for push and for poll delivery.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	"github.com/tenure-dev/tenure/services/ledger/ssf"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const (
	accountDisabled  = "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
	sessionRevoked   = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	credentialChange = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
	verification     = "https://schemas.openid.net/secevent/ssf/event-type/verification"
)

// env is a running transmitter behind a real HTTP server, on a real database and NATS.
type env struct {
	t      testing.TB
	url    string // issuer
	dbURL  string
	nats   *natstest.Server
	tx     *ssf.Transmitter
	auth   *authn.Authenticator
	cancel context.CancelFunc
	done   chan error
	srv    *http.Server
}

func tokens(t testing.TB) *authn.Authenticator {
	a, err := authn.New([]authn.TokenEntry{
		{Name: "siem", Roles: []authn.Role{authn.RoleSecurity}, Token: "siem-token"},
		{Name: "idp", Roles: []authn.Role{authn.RoleSecurity}, Token: "idp-token"},
		{Name: "auditor", Roles: []authn.Role{authn.RoleAuditor}, Token: "auditor-token"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func startEnv(t testing.TB, cfg ssf.Config, dbURL string, ns *natstest.Server, lis net.Listener) *env {
	t.Helper()
	if lis == nil {
		var err error
		if lis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	pool, err := pgstore.Connect(context.Background(), dbURL, "ssf")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, url: "http://" + lis.Addr().String(), dbURL: dbURL, nats: ns, auth: tokens(t), done: make(chan error, 1)}
	cfg.Issuer = e.url
	cfg.AllowHTTP = true
	cfg.KeyFile = dbKeyFile(t, dbURL)
	e.tx, err = ssf.New(context.Background(), cfg, ssf.Deps{Pool: pool, JS: ns.JS, Auth: e.auth})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/.well-known/", e.tx.Handler())
	mux.Handle("/ssf/", e.tx.Handler())
	e.srv = &http.Server{Handler: mux}
	go e.srv.Serve(lis)
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.done <- e.tx.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		e.srv.Close()
		cancel()
		if err := <-e.done; err != nil {
			t.Errorf("Run: %v", err)
		}
		pool.Close()
	}
	t.Cleanup(stop)
	e.cancel = func() { stop() }
	return e
}

var keyFiles sync.Map

// dbKeyFile gives each database one key file, so a restarted transmitter keeps its key.
func dbKeyFile(t testing.TB, dbURL string) string {
	if f, ok := keyFiles.Load(dbURL); ok {
		return f.(string)
	}
	f := t.TempDir() + "/ssf.key"
	keyFiles.Store(dbURL, f)
	return f
}

// call makes a management API request and decodes a JSON answer into out (when not nil).
func (e *env) call(method, path, token string, body any, out any) int {
	e.t.Helper()
	var r io.Reader
	if s, ok := body.(string); ok {
		r = strings.NewReader(s)
	} else if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.url+path, r)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

// publish puts a revocation on the stream as the provisioner does.
func (e *env) publish(kind eventsv1.RevocationKind, worker, email, system string) *eventsv1.Revocation {
	e.t.Helper()
	tok := strings.ToLower(strings.TrimPrefix(kind.String(), "REVOCATION_KIND_"))
	rev := &eventsv1.Revocation{RevocationId: events.NewID(), Kind: kind, WorkerId: worker, Email: email, System: system, Connector: "demo-" + system,
		OccurredAt: timestamppb.Now(), Verified: true}
	m, err := events.Msg(context.Background(), events.Event{ID: events.NewID(), Subject: events.Subject("tenure.revocation", tok, worker), Source: "tenure/provisioner", WorkerID: worker, Payload: rev})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.nats.JS.PublishMsg(context.Background(), m); err != nil {
		e.t.Fatal(err)
	}
	return rev
}

// receiver validates SETs independently of tenure.
type receiver struct {
	t        *testing.T
	issuer   string
	aud      string
	keys     jwk.Set
	mu       sync.Mutex
	got      []map[string]any
	failNext int // answer 503 to this many pushes first
	pushes   int
	authSeen []string
}

// discover reads the well-known document and fetches the JWKS it names, over HTTP.
func discover(t *testing.T, issuer, aud string) *receiver {
	t.Helper()
	resp, err := http.Get(issuer + "/.well-known/ssf-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var meta struct {
		SpecVersion string   `json:"spec_version"`
		Issuer      string   `json:"issuer"`
		JWKSURI     string   `json:"jwks_uri"`
		Methods     []string `json:"delivery_methods_supported"`
		Config      string   `json:"configuration_endpoint"`
		Verify      string   `json:"verification_endpoint"`
		AddSubject  string   `json:"add_subject_endpoint"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&meta); err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("Content-Type") != "application/json" || meta.Issuer != issuer || meta.SpecVersion != "1_0" ||
		!slices.Contains(meta.Methods, "urn:ietf:rfc:8935") || !slices.Contains(meta.Methods, "urn:ietf:rfc:8936") ||
		meta.Config != issuer+"/ssf/streams" || meta.Verify == "" || meta.AddSubject == "" {
		t.Fatalf("ssf-configuration: %+v", meta)
	}
	keys, err := jwk.Fetch(context.Background(), meta.JWKSURI)
	if err != nil {
		t.Fatalf("fetch JWKS %s: %v", meta.JWKSURI, err)
	}
	return &receiver{t: t, issuer: issuer, aud: aud, keys: keys}
}

// validate checks a SET's signature and claims and returns its claims.
func (r *receiver) validate(token string) (map[string]any, error) {
	msg, err := jws.Parse([]byte(token))
	if err != nil {
		return nil, err
	}
	h := msg.Signatures()[0].ProtectedHeaders()
	if h.Type() != "secevent+jwt" || h.Algorithm() != jwa.RS256 || h.KeyID() == "" {
		return nil, fmt.Errorf("header typ=%q alg=%q kid=%q", h.Type(), h.Algorithm(), h.KeyID())
	}
	tok, err := jwt.Parse([]byte(token), jwt.WithKeySet(r.keys), jwt.WithIssuer(r.issuer), jwt.WithAudience(r.aud),
		jwt.WithValidate(true), jwt.WithAcceptableSkew(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("validate: %w", err)
	}
	if tok.IssuedAt().IsZero() || time.Since(tok.IssuedAt()) > time.Minute || tok.JwtID() == "" {
		return nil, fmt.Errorf("iat %v jti %q", tok.IssuedAt(), tok.JwtID())
	}
	if tok.Subject() != "" || !tok.Expiration().IsZero() {
		return nil, fmt.Errorf("a SET carries no sub and no exp (SSF 1.0)")
	}
	all, err := tok.AsMap(context.Background())
	if err != nil {
		return nil, err
	}
	sub, ok := all["sub_id"].(map[string]any)
	if !ok || sub["format"] == nil {
		return nil, fmt.Errorf("sub_id missing: %v", all)
	}
	evs, ok := all["events"].(map[string]any)
	if !ok || len(evs) != 1 {
		return nil, fmt.Errorf("events must hold one event: %v", all["events"])
	}
	for typ, p := range evs {
		payload, _ := p.(map[string]any)
		switch typ {
		case accountDisabled, verification:
		case sessionRevoked:
			if _, ok := payload["event_timestamp"].(float64); !ok || payload["initiating_entity"] != "policy" {
				return nil, fmt.Errorf("session-revoked payload %v", payload)
			}
		case credentialChange:
			if payload["change_type"] != "revoke" || payload["credential_type"] == nil {
				return nil, fmt.Errorf("credential-change payload %v", payload)
			}
		default:
			return nil, fmt.Errorf("unexpected event type %s", typ)
		}
	}
	return all, nil
}

// ServeHTTP is an RFC 8935 push endpoint.
func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pushes++
	r.authSeen = append(r.authSeen, req.Header.Get("Authorization"))
	if r.failNext > 0 {
		r.failNext--
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/secevent+jwt" {
		r.t.Errorf("push Content-Type %q", ct)
	}
	b, _ := io.ReadAll(req.Body)
	claims, err := r.validate(string(b))
	if err != nil {
		r.t.Errorf("push: %v", err)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"err":"invalid_request","description":%q}`, err.Error())
		return
	}
	r.got = append(r.got, claims)
	w.WriteHeader(http.StatusAccepted)
}

func (r *receiver) received() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func eventType(c map[string]any) string {
	for k := range c["events"].(map[string]any) {
		return k
	}
	return ""
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPushAndPollReceiversValidateEverySET(t *testing.T) {
	e := startEnv(t, ssf.Config{Tenant: "clinic-1", PushBackoff: 50 * time.Millisecond, MinVerificationInterval: time.Hour, PollWait: 2 * time.Second},
		pgtest.NewDatabase(t), natstest.Start(t), nil)

	// Push receiver (aud = its token name), which fails its first two deliveries.
	push := discover(t, e.url, "siem")
	push.failNext = 2
	pushSrv := httptest.NewServer(push)
	t.Cleanup(pushSrv.Close)
	var created map[string]any
	if code := e.call("POST", "/ssf/streams", "siem-token", map[string]any{
		"delivery":         map[string]string{"method": "urn:ietf:rfc:8935", "endpoint_url": pushSrv.URL + "/events", "authorization_header": "Bearer receiver-secret"},
		"events_requested": []string{accountDisabled, sessionRevoked, credentialChange, "urn:example:unknown"},
		"description":      "SIEM",
	}, &created); code != http.StatusCreated {
		t.Fatalf("create push stream: %d %v", code, created)
	}
	pushID := created["stream_id"].(string)
	if created["iss"] != e.url || fmt.Sprint(created["aud"]) != "[siem]" || len(created["events_delivered"].([]any)) != 3 {
		t.Errorf("push stream config: %v", created)
	}
	if d := created["delivery"].(map[string]any); d["authorization_header"] != nil {
		t.Errorf("the authorization header is echoed back: %v", d)
	}

	// Poll receiver: only account-disabled, and worker w-2 removed.
	poll := discover(t, e.url, "idp")
	var pc map[string]any
	if code := e.call("POST", "/ssf/streams", "idp-token", map[string]any{
		"delivery": map[string]string{"method": "urn:ietf:rfc:8936"}, "events_requested": []string{accountDisabled},
	}, &pc); code != http.StatusCreated {
		t.Fatalf("create poll stream: %d %v", code, pc)
	}
	pollID := pc["stream_id"].(string)
	pollURL := pc["delivery"].(map[string]any)["endpoint_url"].(string)
	if pollURL != e.url+"/ssf/poll/"+pollID {
		t.Fatalf("poll endpoint_url %s", pollURL)
	}
	if code := e.call("POST", "/ssf/subjects:remove", "idp-token", map[string]any{"stream_id": pollID,
		"subject": map[string]string{"format": "opaque", "id": "w-2"}}, nil); code != http.StatusNoContent {
		t.Fatalf("remove subject: %d", code)
	}
	// The SIEM names w-1 by email, as a complex subject with the tenant.
	ada := map[string]any{"format": "complex", "user": map[string]string{"format": "email", "email": "ada@clinic.example"},
		"tenant": map[string]string{"format": "opaque", "id": "clinic-1"}}
	if code := e.call("POST", "/ssf/subjects:add", "siem-token", map[string]any{"stream_id": pushID, "subject": ada}, nil); code != http.StatusOK {
		t.Fatalf("add subject: %d", code)
	}

	// Verification event, with the receiver's state.
	if code := e.call("POST", "/ssf/verify", "siem-token", map[string]string{"stream_id": pushID, "state": "s-123"}, nil); code != http.StatusNoContent {
		t.Fatalf("verify: %d", code)
	}
	waitFor(t, "the verification SET", func() bool { return len(push.received()) == 1 })
	v := push.received()[0]
	if eventType(v) != verification || v["events"].(map[string]any)[verification].(map[string]any)["state"] != "s-123" ||
		fmt.Sprint(v["sub_id"]) != fmt.Sprint(map[string]any{"format": "opaque", "id": pushID}) {
		t.Errorf("verification SET: %v", v)
	}
	push.mu.Lock()
	if push.pushes != 3 {
		t.Errorf("pushes = %d, want 3 (two 503s, then success)", push.pushes)
	}
	push.mu.Unlock()
	if code := e.call("POST", "/ssf/verify", "siem-token", map[string]string{"stream_id": pushID}, nil); code != http.StatusTooManyRequests {
		t.Errorf("second verification within the interval: %d, want 429", code)
	}

	// Revocations; the first push of one of them fails, and the push loop retries it.
	push.mu.Lock()
	push.failNext = 1
	push.mu.Unlock()
	r1 := e.publish(eventsv1.RevocationKind_REVOCATION_KIND_SESSION_REVOKED, "w-1", "ada@clinic.example", "ehr")
	r2 := e.publish(eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, "w-1", "ada@clinic.example", "ehr")
	r3 := e.publish(eventsv1.RevocationKind_REVOCATION_KIND_CREDENTIALS_REVOKED, "w-1", "ada@clinic.example", "ehr")
	e.publish(eventsv1.RevocationKind_REVOCATION_KIND_CASE_COMPLETED, "w-1", "ada@clinic.example", "")
	r5 := e.publish(eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, "w-2", "grace@clinic.example", "wiki")
	r6 := e.publish(eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, "w-3", "", "chat")

	waitFor(t, "five revocation SETs by push", func() bool { return len(push.received()) >= 6 })
	time.Sleep(200 * time.Millisecond) // nothing more arrives: case_completed has no SSF event
	got := push.received()[1:]
	if len(got) != 5 {
		t.Fatalf("push received %d revocation SETs, want 5", len(got))
	}
	byTxn := map[string]map[string]any{}
	jtis := map[string]bool{}
	for _, c := range got {
		byTxn[c["txn"].(string)] = c
		jtis[c["jti"].(string)] = true
	}
	if len(jtis) != 5 {
		t.Errorf("jtis not unique: %v", jtis)
	}
	for _, tc := range []struct {
		rev *eventsv1.Revocation
		typ string
		sub any
	}{
		// w-1 in the receiver's own form; others by default: email (or worker id), the system
		// as the application, and the tenant.
		{r1, sessionRevoked, ada},
		{r2, accountDisabled, ada},
		{r3, credentialChange, ada},
		{r5, accountDisabled, map[string]any{"format": "complex", "user": map[string]any{"format": "email", "email": "grace@clinic.example"},
			"application": map[string]any{"format": "opaque", "id": "wiki"}, "tenant": map[string]any{"format": "opaque", "id": "clinic-1"}}},
		{r6, accountDisabled, map[string]any{"format": "complex", "user": map[string]any{"format": "opaque", "id": "w-3"},
			"application": map[string]any{"format": "opaque", "id": "chat"}, "tenant": map[string]any{"format": "opaque", "id": "clinic-1"}}},
	} {
		c := byTxn[tc.rev.RevocationId]
		if c == nil {
			t.Errorf("no SET for %s", tc.rev.Kind)
			continue
		}
		if eventType(c) != tc.typ || fmt.Sprint(c["sub_id"]) != fmt.Sprint(tc.sub) {
			t.Errorf("%s: type %s sub_id %v, want %s %v", tc.rev.Kind, eventType(c), c["sub_id"], tc.typ, tc.sub)
		}
	}
	for _, a := range push.authSeen {
		if a != "Bearer receiver-secret" {
			t.Errorf("push Authorization %q", a)
		}
	}

	// Poll: long poll, validate, ack.
	pollOnce := func(body map[string]any) (map[string]string, bool) {
		var res struct {
			Sets          map[string]string `json:"sets"`
			MoreAvailable bool              `json:"moreAvailable"`
		}
		if code := e.call("POST", "/ssf/poll/"+pollID, "idp-token", body, &res); code != http.StatusOK {
			t.Fatalf("poll: %d", code)
		}
		return res.Sets, res.MoreAvailable
	}
	var polled map[string]string
	waitFor(t, "two SETs by poll", func() bool {
		polled, _ = pollOnce(map[string]any{"maxEvents": 10, "returnImmediately": true})
		return len(polled) == 2
	})
	subs := map[string]bool{}
	for jti, tok := range polled {
		c, err := poll.validate(tok)
		if err != nil {
			t.Fatalf("poll SET: %v", err)
		}
		if c["jti"] != jti || eventType(c) != accountDisabled || c["aud"] == nil {
			t.Errorf("poll SET %s: %v", jti, c)
		}
		subs[fmt.Sprint(c["sub_id"].(map[string]any)["user"])] = true
	}
	if !subs[fmt.Sprint(map[string]any{"format": "email", "email": "ada@clinic.example"})] || !subs[fmt.Sprint(map[string]any{"format": "opaque", "id": "w-3"})] {
		t.Errorf("poll subjects %v (w-2 was removed)", subs)
	}
	// Unacknowledged SETs come again; acknowledged ones never.
	again, _ := pollOnce(map[string]any{"returnImmediately": true})
	if len(again) != 2 {
		t.Errorf("re-poll without ack: %d SETs, want 2", len(again))
	}
	var acks []string
	for jti := range polled {
		acks = append(acks, jti)
	}
	start := time.Now()
	after, more := pollOnce(map[string]any{"ack": acks, "maxEvents": 10})
	if len(after) != 0 || more || time.Since(start) < time.Second {
		t.Errorf("after ack: %d SETs, more %v, returned after %s (want a long poll)", len(after), more, time.Since(start))
	}

	// Restart: streams and subjects are in PostgreSQL.
	e.cancel()
	lis, err := net.Listen("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	e2 := startEnv(t, ssf.Config{Tenant: "clinic-1"}, e.dbURL, e.nats, lis)
	var list []map[string]any
	if code := e2.call("GET", "/ssf/streams", "siem-token", nil, &list); code != http.StatusOK || len(list) != 1 || list[0]["stream_id"] != pushID {
		t.Fatalf("streams after restart: %d %v", code, list)
	}
	r7 := e2.publish(eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, "w-1", "ada@clinic.example", "chat")
	waitFor(t, "a SET after restart", func() bool { return len(push.received()) == 7 })
	if c := push.received()[6]; c["txn"] != r7.RevocationId || fmt.Sprint(c["sub_id"]) != fmt.Sprint(ada) {
		t.Errorf("after restart: %v", c)
	}
}
