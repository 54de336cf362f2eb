package e2e

// Helpers for the tests and benchmarks that drive tenure against real targets: a private
// slapd with the ppolicy overlay, the scimmy SCIM server from npm (test/scimserver), an
// in-process HTTP account store behind the webhook connector, and a whole tenure (all four
// services in this process) configured with those targets.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/cmd/app"
	"github.com/tenure-dev/tenure/pkg/connectors/ldap/slapdtest"
	"github.com/tenure-dev/tenure/pkg/connectors/scim/scimtest"
	whconn "github.com/tenure-dev/tenure/pkg/connectors/webhook"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	"github.com/tenure-dev/tenure/pkg/webhook"
)

// ---- tenure, all four services in this process, with the caller's targets ----

type stackEnv struct {
	*app.Stack
	AdminURL      string // superuser URL of this test's database
	Dir           string
	OperatorToken string
	HRSecret      string
	Hook          string // the intake webhook URL of source "hr"
}

type stackOptions struct {
	Policy     string // policy YAML
	Connectors string // connectors YAML
	// ConnectorsFor, when set, writes the connectors YAML once the database is known (a
	// postgres target on the test's own database).
	ConnectorsFor func(adminURL string) string
	// NATSSyncAlways fsyncs every JetStream write, as `tenure dev` does.
	NATSSyncAlways bool
	Log            *slog.Logger
	CaseDeadline   time.Duration
	// Tokens are more entries of the tokens file (each a YAML flow mapping: {name, roles,
	// token}), for tests that act as approvers or security.
	Tokens []string
	// ApprovalTick is how often the approval service checks deadlines (JIT and break-glass
	// expiry); 0: its default.
	ApprovalTick time.Duration
}

// startStack starts embedded NATS, sets up a fresh database of the test cluster as `tenure
// setup` does, and runs intake, approval, provisioner and ledger in this process, each
// connected as its own database role, with the given policy and connectors files.
func startStack(tb testing.TB, o stackOptions) *stackEnv {
	tb.Helper()
	ctx := context.Background()
	ns, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: tb.TempDir(), SyncAlways: o.NATSSyncAlways})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	admin := pgtest.NewDatabase(tb)
	if err := app.SetupDatabase(ctx, admin, nil); err != nil {
		tb.Fatal(err)
	}
	if o.ConnectorsFor != nil {
		o.Connectors = o.ConnectorsFor(admin)
	}
	e := &stackEnv{AdminURL: admin, Dir: tb.TempDir(), OperatorToken: "op-" + fmt.Sprint(time.Now().UnixNano()), HRSecret: webhook.NewSecret()}
	files := map[string]string{
		"tokens.yaml":     fmt.Sprintf("tokens:\n  - {name: olga, roles: [operator, auditor], token: %q}\n", e.OperatorToken) + tokenLines(o.Tokens),
		"sources.yaml":    fmt.Sprintf("sources:\n  hr:\n    secrets: [%q]\n", e.HRSecret),
		"policy.yaml":     o.Policy,
		"connectors.yaml": o.Connectors,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(e.Dir, name), []byte(body), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	cfg := app.ServeConfig{
		Target: "all", NATSURL: ns.ClientURL(), EnsureStreams: true, StreamReplicas: 1,
		HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0",
		TokensFile: filepath.Join(e.Dir, "tokens.yaml"), WebhookSources: filepath.Join(e.Dir, "sources.yaml"),
		Policy: filepath.Join(e.Dir, "policy.yaml"), Connectors: filepath.Join(e.Dir, "connectors.yaml"),
		LedgerKeyFile: filepath.Join(e.Dir, "ledger.key"), LedgerWriterRole: "tenure_ledger",
		ConnectTimeout: 10 * time.Second, CaseDeadline: 5 * time.Minute, LogFormat: "text", LogLevel: "info",
		DatabaseURLs: map[string]string{}, ApprovalTick: o.ApprovalTick,
	}
	if o.CaseDeadline > 0 {
		cfg.CaseDeadline = o.CaseDeadline
	}
	if o.NATSSyncAlways {
		cfg.NATSAtomicBatch = natsx.AtomicMinSyncAlways // as `tenure dev`
	}
	for _, svc := range app.Targets {
		if cfg.DatabaseURLs[svc], err = pgstore.ServiceURL(admin, svc, ""); err != nil {
			tb.Fatal(err)
		}
	}
	// For diagnosis: TENURE_BENCH_PROVISIONER_POOL=N gives the provisioner a pool of N
	// connections instead of pgxpool's default (max(4, CPUs)).
	if n := os.Getenv("TENURE_BENCH_PROVISIONER_POOL"); n != "" {
		u, err := url.Parse(cfg.DatabaseURLs["provisioner"])
		if err != nil {
			tb.Fatal(err)
		}
		q := u.Query()
		q.Set("pool_max_conns", n)
		u.RawQuery = q.Encode()
		cfg.DatabaseURLs["provisioner"] = u.String()
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	st, err := app.Start(ctx, &cfg, app.Options{Log: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(st.Stop)
	e.Stack = st
	e.Hook = "http://" + st.HTTPAddr + "/webhooks/hr"
	return e
}

func tokenLines(entries []string) string {
	var b strings.Builder
	for _, e := range entries {
		b.WriteString("  - " + e + "\n")
	}
	return b.String()
}

// ---- a private slapd with ppolicy (as pkg/connectors/ldap's tests start it) ----

// The group the e2e policy grants; a groupOfNames needs a member from the start.
const e2eLDAPGroups = `dn: cn=clinicians,` + slapdtest.GroupsDN + `
objectClass: groupOfNames
cn: clinicians
member: ` + slapdtest.AdminDN + `
`

// slapdServer is a private slapd (slapdtest) that the tests check with OpenLDAP's own
// command-line tools, not through tenure's LDAP code.
type slapdServer struct{ URL string }

// startSlapd starts slapd on a free loopback port and stops it when the test ends.
func startSlapd(tb testing.TB) *slapdServer {
	tb.Helper()
	for _, tool := range []string{"ldapwhoami", "ldapmodify", "ldapsearch"} {
		slapdtest.Tool(tb, tool)
	}
	return &slapdServer{URL: slapdtest.Start(tb, slapdtest.Options{LDIF: e2eLDAPGroups}).URL}
}

// Bind tries a simple bind as dn on a fresh connection (ldapwhoami).
func (s *slapdServer) Bind(dn, password string) error {
	out, err := exec.Command("ldapwhoami", "-x", "-H", s.URL, "-D", dn, "-w", password).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// Modify applies LDIF as the directory's administrator (ldapmodify).
func (s *slapdServer) Modify(tb testing.TB, ldif string) {
	tb.Helper()
	cmd := exec.Command("ldapmodify", "-x", "-H", s.URL, "-D", slapdtest.AdminDN, "-w", slapdtest.AdminPW)
	cmd.Stdin = strings.NewReader(ldif)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("ldapmodify: %v\n%s\n%s", err, out, ldif)
	}
}

// Search returns the entries matching filter under base as attribute → values, keyed by DN.
func (s *slapdServer) Search(tb testing.TB, base, filter string, attrs ...string) map[string]map[string][]string {
	tb.Helper()
	args := append([]string{"-x", "-LLL", "-o", "ldif-wrap=no", "-H", s.URL, "-D", slapdtest.AdminDN, "-w", slapdtest.AdminPW, "-b", base, filter}, attrs...)
	out, err := exec.Command("ldapsearch", args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("ldapsearch %s: %v\n%s", filter, err, out)
	}
	res := map[string]map[string][]string{}
	var cur map[string][]string
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		if k == "dn" {
			cur = map[string][]string{}
			res[v] = cur
			continue
		}
		if cur != nil {
			cur[k] = append(cur[k], v)
		}
	}
	return res
}

// ---- the scimmy SCIM server from npm (as pkg/connectors/scim's tests start it) ----

const scimToken = "s3cr3t-e2e-scim-token"

// scimServer is test/scimserver (scimtest); Call sends requests to it directly, as the
// target's administrator would.
type scimServer struct{ *scimtest.Server }

// startSCIM starts test/scimserver on a free port; env adds its switches.
func startSCIM(tb testing.TB, env ...string) *scimServer {
	tb.Helper()
	return &scimServer{scimtest.Start(tb, scimToken, env...)}
}

// User finds a user by userName straight from the server.
func (s *scimServer) User(tb testing.TB, userName string) map[string]any {
	tb.Helper()
	var list struct {
		Resources []map[string]any `json:"Resources"`
	}
	if code := s.Call(tb, "GET", "Users?filter="+url.QueryEscape(fmt.Sprintf("userName eq %q", userName)), nil, &list); code != 200 {
		tb.Fatalf("GET Users?filter userName eq %s: %d", userName, code)
	}
	if len(list.Resources) != 1 {
		tb.Fatalf("SCIM server has %d users named %s", len(list.Resources), userName)
	}
	id, _ := list.Resources[0]["id"].(string)
	var u map[string]any
	if code := s.Call(tb, "GET", "Users/"+url.PathEscape(id), nil, &u); code != 200 {
		tb.Fatalf("GET Users/%s: %d", id, code)
	}
	return u
}

// ---- an HTTP account store behind the webhook connector ----

// accountStore is a target system in this process that speaks the webhook connector's
// protocol (pkg/connectors/webhook): every request is verified (Standard Webhooks), and the
// accounts live in a map. fail, when set, may answer a request with an error status first.
type accountStore struct {
	URL      string
	verifier *webhook.Verifier
	Secret   string

	mu       sync.Mutex
	accounts map[string]*whconn.Account // by username
	byID     map[string]string          // id → username
	calls    []storeCall
	record   bool
	fail     func(op, username string) (status int, retryAfter string)
}

type storeCall struct {
	At       time.Time
	Op, User string
	Status   int
}

func newAccountStore(tb testing.TB) *accountStore {
	tb.Helper()
	secret := webhook.NewSecret()
	key, err := webhook.ParseSecret(secret)
	if err != nil {
		tb.Fatal(err)
	}
	s := &accountStore{Secret: secret, verifier: &webhook.Verifier{Keys: [][]byte{key}, Tolerance: 5 * time.Minute},
		accounts: map[string]*whconn.Account{}, byID: map[string]string{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	tb.Cleanup(func() { srv.Close() })
	s.URL = "http://" + l.Addr().String() + "/tenure"
	return s
}

// Seed adds enabled accounts directly, as if they existed before tenure.
func (s *accountStore) Seed(usernames ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range usernames {
		id := "id-" + u
		s.accounts[u] = &whconn.Account{ID: id, Username: u, State: "enabled"}
		s.byID[id] = u
	}
}

// State is the stored state of an account ("" when absent).
func (s *accountStore) State(username string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.accounts[username]; a != nil {
		return a.State
	}
	return ""
}

func (s *accountStore) setFail(f func(op, username string) (int, string)) {
	s.mu.Lock()
	s.fail = f
	s.mu.Unlock()
}

// Record starts (or stops) keeping a log of calls.
func (s *accountStore) Record(on bool) {
	s.mu.Lock()
	s.record, s.calls = on, nil
	s.mu.Unlock()
}

func (s *accountStore) Calls() []storeCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]storeCall(nil), s.calls...)
}

func (s *accountStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "read", http.StatusBadRequest)
		return
	}
	if _, err := s.verifier.Verify(r.Header.Get(webhook.HeaderID), r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature), body); err != nil {
		http.Error(w, "bad signature: "+err.Error(), http.StatusUnauthorized)
		return
	}
	var req whconn.Request
	if err := json.Unmarshal(body, &req); err != nil {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	status, out, retryAfter := s.handle(&req)
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	if status >= 400 && out == nil {
		http.Error(w, http.StatusText(status), status)
		return
	}
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(status)
	if out != nil {
		json.NewEncoder(w).Encode(out)
	}
}

func (s *accountStore) handle(req *whconn.Request) (status int, out *whconn.Response, retryAfter string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	user := ""
	if req.Account != nil {
		user = req.Account.Username
		if req.Account.ID != "" {
			user = s.byID[req.Account.ID]
		}
	} else if req.Spec != nil {
		user = req.Spec.Username
	}
	defer func() {
		if s.record {
			s.calls = append(s.calls, storeCall{At: time.Now(), Op: req.Operation, User: user, Status: status})
		}
	}()
	if s.fail != nil {
		if code, ra := s.fail(req.Operation, user); code != 0 {
			return code, nil, ra
		}
	}
	a := s.accounts[user]
	switch req.Operation {
	case whconn.OpCreate:
		if a != nil {
			return http.StatusConflict, nil, ""
		}
		a = &whconn.Account{ID: "id-" + user, Username: user, Email: req.Spec.Email, State: "enabled", Entitlements: req.Spec.Entitlements}
		s.accounts[user], s.byID[a.ID] = a, user
		c := *a
		return http.StatusOK, &whconn.Response{Account: &c}, ""
	case whconn.OpList:
		res := &whconn.Response{}
		for _, a := range s.accounts {
			res.Accounts = append(res.Accounts, *a)
		}
		return http.StatusOK, res, ""
	}
	if a == nil {
		return http.StatusNotFound, nil, ""
	}
	switch req.Operation {
	case whconn.OpGet:
		c := *a
		return http.StatusOK, &whconn.Response{Account: &c}, ""
	case whconn.OpDisable:
		a.State = "disabled"
	case whconn.OpEnable:
		a.State = "enabled"
	case whconn.OpDelete:
		delete(s.accounts, user)
		delete(s.byID, a.ID)
	case whconn.OpRevokeSessions:
	case whconn.OpGrant:
		a.Entitlements = append(a.Entitlements, req.Entitlement)
	case whconn.OpRevoke:
		var keep []string
		for _, e := range a.Entitlements {
			if e != req.Entitlement {
				keep = append(keep, e)
			}
		}
		a.Entitlements = keep
	default:
		return http.StatusNotImplemented, nil, ""
	}
	return http.StatusNoContent, nil, ""
}
