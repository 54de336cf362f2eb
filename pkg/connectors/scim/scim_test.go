package scim_test

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/connectors/scim"
)

// config is the YAML an operator would write for the server at baseURL.
func config(baseURL, extra string) []byte {
	return fmt.Appendf(nil, "base_url: %s\ntoken: %s\n%s", baseURL, testToken, extra)
}

func open(t *testing.T, baseURL, extra string) connector.Connector {
	t.Helper()
	c, err := connector.Open(t.Context(), scim.TypeName, config(baseURL, extra))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { connector.Close(c) })
	return c
}

const groupsConfig = `groups:
  - entitlement: readers
    display_name: EHR Readers
  - entitlement: writers
`

// conformance runs the suite against a fresh server started with env. The page size of 2
// makes the suite's three accounts span pages.
func conformance(t *testing.T, env ...string) {
	srv := startServer(t, env...)
	srv.group(t, "EHR Readers")
	srv.group(t, "writers")
	connectortest.Run(t, connectortest.Harness{
		New: func(t *testing.T) connector.Connector {
			c, err := connector.Open(t.Context(), scim.TypeName, config(srv.URL, "page_size: 2\n"+groupsConfig))
			if err != nil {
				t.Fatal(err)
			}
			return c
		},
		Features: connectortest.Features{
			Create: true, Disable: true, Enable: true, Delete: true,
			Entitlements: true, List: true, Profile: true,
		},
		Entitlements: []string{"readers", "writers"},
	})
}

func TestConformance(t *testing.T) { conformance(t) }

// Every change goes through PUT (users and groups) against a service provider that says it
// has no PATCH.
func TestConformancePatchUnsupported(t *testing.T) { conformance(t, "PATCH_UNSUPPORTED=1") }

// Users are found by scanning pages against a service provider that cannot filter.
func TestConformanceFilterUnsupported(t *testing.T) { conformance(t, "FILTER_UNSUPPORTED=1") }

// A service provider that advertises PATCH but answers 501: the connector falls back to
// PUT, remembers it, and the change lands.
func TestPutFallbackOn501(t *testing.T) {
	srv := startServer(t, "PATCH_UNSUPPORTED=1", "PATCH_ADVERTISED=1")
	srv.group(t, "writers")
	p := newProxy(t, srv)
	c := open(t, p.URL, "groups: [{entitlement: writers}]\n")
	ctx := t.Context()
	acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "nina", Email: "nina@example.test"})
	if err != nil {
		t.Fatal(err)
	}
	p.take()
	ref := connector.AccountRef{ID: acc.ID}
	if err := c.(connector.Disabler).DisableAccount(ctx, ref); err != nil {
		t.Fatalf("DisableAccount: %v", err)
	}
	want := []string{"GET /Users/" + acc.ID + " -> 200", "PATCH /Users/" + acc.ID + " -> 501", "PUT /Users/" + acc.ID + " -> 200"}
	if got := p.take(); !slices.Equal(got, want) {
		t.Errorf("requests = %q\nwant       %q", got, want)
	}
	if u := srv.rawUser(t, acc.ID); u["active"] != false || u["userName"] != "nina" || u["emails"] == nil {
		t.Errorf("after the PUT the target holds %v, want active=false and the other attributes kept", u)
	}
	if got, _ := c.GetAccount(ctx, ref); got.State != connector.StateDisabled {
		t.Errorf("State = %v after disable", got.State)
	}
	// Once refused, PATCH is not tried again.
	p.take()
	if err := c.(connector.Enabler).EnableAccount(ctx, ref); err != nil {
		t.Fatalf("EnableAccount: %v", err)
	}
	for _, r := range p.take() {
		if strings.HasPrefix(r, "PATCH") {
			t.Errorf("PATCH tried again after a 501: %s", r)
		}
	}
	if got, _ := c.GetAccount(ctx, ref); got.State != connector.StateEnabled {
		t.Errorf("State = %v after enable", got.State)
	}
	// Group membership falls back to PUT of the group as well.
	if err := c.(connector.EntitlementGranter).GrantEntitlement(ctx, ref, "writers"); err != nil {
		t.Fatalf("GrantEntitlement: %v", err)
	}
	if got, _ := c.GetAccount(ctx, ref); !slices.Equal(got.Entitlements, []string{"writers"}) {
		t.Errorf("Entitlements = %v after grant", got.Entitlements)
	}
}

// The target answers 200 to the PATCH and changes nothing. DisableAccount says so, and the
// read-back still shows the account enabled, so the host does not confirm the disable.
func TestIgnoredPatchIsCaughtAtReadBack(t *testing.T) {
	srv := startServer(t, "IGNORE_PATCH=1")
	c := open(t, srv.URL, "")
	ctx := t.Context()
	acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "ivan"})
	if err != nil {
		t.Fatal(err)
	}
	ref := connector.AccountRef{ID: acc.ID, Username: "ivan"}
	err = c.(connector.Disabler).DisableAccount(ctx, ref)
	if err == nil {
		t.Error("DisableAccount against a target that ignored the PATCH succeeded")
	} else {
		if connector.KindOf(err) != connector.KindRetryable || !strings.Contains(err.Error(), "did not apply") {
			t.Errorf("DisableAccount error = %v (kind %v), want a retryable 'did not apply'", err, connector.KindOf(err))
		}
	}
	got, err := c.GetAccount(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != connector.StateEnabled {
		t.Fatalf("read-back State = %v, want enabled: the target never disabled the user", got.State)
	}
	if u := srv.rawUser(t, acc.ID); u["active"] != true {
		t.Fatalf("target holds active=%v", u["active"])
	}
}

func TestPagination(t *testing.T) {
	srv := startServer(t)
	c := open(t, srv.URL, "page_size: 3\n")
	ctx := t.Context()
	want := map[string]string{}
	for i := range 10 {
		acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: fmt.Sprintf("user%02d", i)})
		if err != nil {
			t.Fatal(err)
		}
		want[acc.ID] = acc.Username
	}
	// One disabled, to see states come through the listing.
	if err := c.(connector.Disabler).DisableAccount(ctx, connector.AccountRef{Username: "user04"}); err != nil {
		t.Fatal(err)
	}
	token, pages := "", 0
	got := map[string]connector.Account{}
	for {
		accs, next, err := c.(connector.Lister).ListAccounts(ctx, token)
		if err != nil {
			t.Fatalf("ListAccounts(%q): %v", token, err)
		}
		pages++
		if len(accs) > 3 {
			t.Errorf("page %d has %d accounts, page_size is 3", pages, len(accs))
		}
		for _, a := range accs {
			if _, dup := got[a.ID]; dup {
				t.Errorf("%s listed twice", a.Username)
			}
			got[a.ID] = a
		}
		if next == "" {
			break
		}
		if next == token || pages > 10 {
			t.Fatalf("token %q does not advance", next)
		}
		token = next
	}
	if pages != 4 {
		t.Errorf("10 users in pages of 3 took %d pages, want 4", pages)
	}
	for id, name := range want {
		a, ok := got[id]
		switch {
		case !ok:
			t.Errorf("%s not listed", name)
		case a.Username != name:
			t.Errorf("%s listed as %q", id, a.Username)
		case name == "user04" && a.State != connector.StateDisabled, name != "user04" && a.State != connector.StateEnabled:
			t.Errorf("%s listed with State %v", name, a.State)
		}
	}
	if _, _, err := c.(connector.Lister).ListAccounts(ctx, "x"); connector.KindOf(err) != connector.KindPermanent {
		t.Errorf("bad page token: %v, want a permanent error", err)
	}
}

func TestBearerAuthFailureIsPermanent(t *testing.T) {
	srv := startServer(t)
	c, err := connector.Open(t.Context(), scim.TypeName, fmt.Appendf(nil, "base_url: %s\ntoken: wrong-hunter2\n", srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	defer connector.Close(c)
	_, err = c.GetAccount(t.Context(), connector.AccountRef{Username: "anyone"})
	if err == nil {
		t.Fatal("a wrong token was accepted")
	}
	if k := connector.KindOf(err); k != connector.KindPermanent {
		t.Errorf("KindOf(%v) = %v, want permanent: retrying a wrong token never helps", err, k)
	}
	if !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "token") {
		t.Errorf("error %q does not name the 401 and the token", err)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error leaks the token: %v", err)
	}
}

func TestRetryableStatuses(t *testing.T) {
	tests := []struct {
		fail       string
		retryAfter time.Duration
	}{
		{"429:1:7", 7 * time.Second},
		{"503:1:2", 2 * time.Second},
		{"503:1", 0},
		{"500:1", 0},
		{"502:1", 0},
	}
	for _, tt := range tests {
		t.Run(tt.fail, func(t *testing.T) {
			srv := startServer(t, "FAIL="+tt.fail)
			c := open(t, srv.URL, "")
			ref := connector.AccountRef{Username: "rita"}
			_, err := c.GetAccount(t.Context(), ref)
			if err == nil {
				t.Fatal("no error")
			}
			if k := connector.KindOf(err); k != connector.KindRetryable {
				t.Errorf("KindOf(%v) = %v, want retryable", err, k)
			}
			if got := connector.RetryAfterOf(err); got != tt.retryAfter {
				t.Errorf("RetryAfterOf = %v, want %v", got, tt.retryAfter)
			}
			// The failure was transient: the next try reaches the target.
			if _, err := c.GetAccount(t.Context(), ref); !errors.Is(err, connector.ErrNotFound) {
				t.Errorf("second GetAccount = %v, want not found", err)
			}
		})
	}
}

func TestPermanentStatuses(t *testing.T) {
	srv := startServer(t)
	p := newProxy(t, srv)
	c := open(t, p.URL, groupsConfig)
	ctx := t.Context()
	p.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Query().Get("filter") == `userName eq "bad"` {
			w.Header().Set("Content-Type", "application/scim+json")
			w.WriteHeader(400)
			w.Write([]byte(`{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"400","scimType":"invalidValue","detail":"nope"}`))
			return true
		}
		return false
	})
	_, err := c.GetAccount(ctx, connector.AccountRef{Username: "bad"})
	if connector.KindOf(err) != connector.KindPermanent || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "nope") {
		t.Errorf("400: %v (kind %v), want permanent with the target's detail", err, connector.KindOf(err))
	}
	// Groups configured but missing in the target: granting is the operator's to fix, and
	// reading still works (a missing group must not block a leaver's read-back).
	acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "gus"})
	if err != nil {
		t.Fatalf("CreateAccount with groups missing in the target: %v", err)
	}
	err = c.(connector.EntitlementGranter).GrantEntitlement(ctx, connector.AccountRef{ID: acc.ID}, "readers")
	if connector.KindOf(err) != connector.KindPermanent || !strings.Contains(err.Error(), `no SCIM group with displayName "EHR Readers"`) {
		t.Errorf("grant of a missing group: %v", err)
	}
	if _, err := c.GetAccount(ctx, connector.AccountRef{}); connector.KindOf(err) != connector.KindPermanent {
		t.Errorf("empty ref: %v", err)
	}
}

// Two tasks create the same user at once: the one whose lookup missed gets a 409 and
// returns the existing user.
func TestCreateConflictReturnsExisting(t *testing.T) {
	srv := startServer(t)
	p := newProxy(t, srv)
	c := open(t, p.URL, "")
	ctx := t.Context()
	first, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "cora"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.(connector.Disabler).DisableAccount(ctx, connector.AccountRef{ID: first.ID}); err != nil {
		t.Fatal(err)
	}
	hidden := false
	p.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == "GET" && r.URL.Query().Get("filter") != "" && !hidden {
			hidden = true // the lookup misses once, as if the other create had not landed yet
			w.Header().Set("Content-Type", "application/scim+json")
			w.Write([]byte(`{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":0,"Resources":[]}`))
			return true
		}
		return false
	})
	p.take()
	again, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "cora"})
	if err != nil {
		t.Fatalf("CreateAccount after a 409: %v", err)
	}
	if again.ID != first.ID || again.State != connector.StateDisabled {
		t.Errorf("got %+v, want the existing, still disabled, account %s", again, first.ID)
	}
	if log := p.take(); !slices.Contains(log, "POST /Users -> 409") {
		t.Errorf("requests %q, want a POST answered 409", log)
	}
}

// Usernames with quotes, backslashes and filter-looking characters are found again. The
// filter escapes them as RFC 7644 says (JSON string rules); scimmy rejects an escaped quote
// (400 invalidFilter) and compares an escaped backslash without unescaping it (no match), so
// for such names the connector confirms by scanning, rather than reporting a user absent.
func TestFilterEscaping(t *testing.T) {
	srv := startServer(t)
	c := open(t, srv.URL, "")
	ctx := t.Context()
	for _, name := range []string{`o"neil`, `back\slash`, `amp&lt<gt>`, `üñí`} {
		acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: name})
		if err != nil {
			t.Fatalf("CreateAccount(%q): %v", name, err)
		}
		got, err := c.GetAccount(ctx, connector.AccountRef{Username: name})
		if err != nil || got.ID != acc.ID {
			t.Errorf("GetAccount(%q) = %+v, %v; want id %s", name, got, err, acc.ID)
		}
	}
	// A prefix of an existing name is another user.
	if _, err := c.GetAccount(ctx, connector.AccountRef{Username: `o"ne`}); !errors.Is(err, connector.ErrNotFound) {
		t.Errorf("GetAccount of a prefix = %v, want not found", err)
	}
}
