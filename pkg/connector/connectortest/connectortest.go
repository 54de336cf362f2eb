// Package connectortest is the conformance suite every tenure connector passes against a live
// target. A connector's test supplies a Harness and calls Run:
//
//	func TestConformance(t *testing.T) {
//		connectortest.Run(t, connectortest.Harness{
//			New:          func(t *testing.T) connector.Connector { return openAgainstTestTarget(t) },
//			Features:     connectortest.Features{Create: true, Disable: true, ...},
//			Entitlements: []string{"readers", "writers"},
//		})
//	}
//
// Features is a feature matrix, not a way to skip work: the suite fails when Features and the
// interfaces the connector implements disagree, and it leaves out only the subtests of a
// capability declared absent.
package connectortest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector"
)

// Features says which capabilities the connector has against this target.
type Features struct {
	Create       bool // connector.Creator
	Disable      bool // connector.Disabler
	Enable       bool // connector.Enabler
	Delete       bool // connector.Deleter
	Entitlements bool // connector.EntitlementGranter
	Sessions     bool // connector.SessionRevoker
	List         bool // connector.Lister
	Credentials  bool // connector.CredentialRevoker
	// Profile says the target keeps email and display name, so GetAccount must return what
	// CreateAccount was given.
	Profile bool
}

// Harness is what the suite needs from a connector's test.
type Harness struct {
	// New returns a connector for one subtest, talking to the live test target. The suite
	// closes it (connector.Close) when the subtest ends.
	New func(t *testing.T) connector.Connector
	// Features is the connector's feature matrix.
	Features Features
	// NewUsername returns a username that does not exist in the target and is valid for it.
	// The default is "ct" followed by 12 random hex digits.
	NewUsername func(t *testing.T) string
	// Entitlements are names the target knows and the connector may grant; at least one is
	// needed when Features.Entitlements is set.
	Entitlements []string
	// Credentials, when set, lets the suite see RevokeCredentials take effect in the target.
	// Without it the suite checks only the contract it can see through the connector:
	// revoking is idempotent, leaves the account's state alone (a disabled account stays
	// disabled) and reports an unknown account as not found.
	Credentials *CredentialProbe
}

// CredentialProbe gives an account a credential in the target and tells whether it still
// works, both outside the connector (a password set and a bind or login tried, or the
// target's own catalog read by an administrator), since the connector cannot be its own
// witness.
type CredentialProbe struct {
	// Give gives the enabled account acc a working credential.
	Give func(t *testing.T, c connector.Connector, acc connector.Account)
	// Works says whether the credential Give set still authenticates the enabled account acc.
	Works func(t *testing.T, c connector.Connector, acc connector.Account) bool
}

// maxPages stops a Lister that never returns an empty next token.
const maxPages = 10000

// Run runs the conformance suite as subtests of t.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil {
		t.Fatal("connectortest: Harness.New is required")
	}
	if h.NewUsername == nil {
		h.NewUsername = randomUsername
	}
	s := &suite{h: h}
	t.Run("Capabilities", s.testCapabilities)
	t.Run("GetUnknown", s.testGetUnknown)
	// The Capabilities subtest checks that the declared features match the implementation,
	// so a capability's subtests run exactly when it is declared; absent ones are not run.
	for _, c := range []struct {
		name  string
		needs []string
		test  func(*testing.T)
	}{
		{"Create", []string{"Create"}, s.testCreate},
		{"CreateIdempotent", []string{"Create"}, s.testCreateIdempotent},
		{"CreateWithEntitlements", []string{"Create", "Entitlements"}, s.testCreateWithEntitlements},
		{"Disable", []string{"Create", "Disable"}, s.testDisable},
		{"Enable", []string{"Create", "Disable", "Enable"}, s.testEnable},
		{"Entitlements", []string{"Create", "Entitlements"}, s.testEntitlements},
		{"RevokeSessions", []string{"Create", "Sessions"}, s.testRevokeSessions},
		{"RevokeCredentials", []string{"Create", "Credentials"}, s.testRevokeCredentials},
		{"List", []string{"Create", "List"}, s.testList},
		{"Delete", []string{"Create", "Delete"}, s.testDelete},
	} {
		if s.declared(c.needs...) {
			t.Run(c.name, c.test)
		}
	}
	if h.Features.Entitlements && len(h.Entitlements) == 0 {
		t.Error("Features.Entitlements is set but Harness.Entitlements is empty")
	}
}

type suite struct{ h Harness }

func randomUsername(t *testing.T) string {
	b := make([]byte, 6)
	rand.Read(b)
	return "ct" + hex.EncodeToString(b)
}

// open returns a new connector closed at the end of t.
func (s *suite) open(t *testing.T) connector.Connector {
	t.Helper()
	c := s.h.New(t)
	if c == nil {
		t.Fatal("Harness.New returned nil")
	}
	t.Cleanup(func() {
		if err := connector.Close(c); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// declared reports whether every named feature is declared in Harness.Features.
func (s *suite) declared(names ...string) bool {
	f := s.h.Features
	have := map[string]bool{
		"Create": f.Create, "Disable": f.Disable, "Enable": f.Enable, "Delete": f.Delete,
		"Entitlements": f.Entitlements, "Sessions": f.Sessions, "List": f.List, "Credentials": f.Credentials,
	}
	for _, n := range names {
		if !have[n] {
			return false
		}
	}
	return true
}

func (s *suite) spec(t *testing.T) connector.AccountSpec {
	u := s.h.NewUsername(t)
	return connector.AccountSpec{
		WorkerID:    "worker-" + u,
		Username:    u,
		Email:       u + "@example.test",
		GivenName:   "Conformance",
		FamilyName:  "Test " + u,
		DisplayName: "Conformance Test " + u,
	}
}

// create creates an account from spec and deletes it when the test ends, if it can.
func (s *suite) create(t *testing.T, c connector.Connector, spec connector.AccountSpec) connector.Account {
	t.Helper()
	acc, err := c.(connector.Creator).CreateAccount(t.Context(), spec)
	if err != nil {
		t.Fatalf("CreateAccount(%q): %v", spec.Username, err)
	}
	if d, ok := c.(connector.Deleter); ok {
		ref := connector.AccountRef{ID: acc.ID, Username: spec.Username}
		t.Cleanup(func() {
			// t.Context is already cancelled when cleanups run.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := d.DeleteAccount(ctx, ref); err != nil {
				t.Errorf("cleanup: DeleteAccount(%q): %v", spec.Username, err)
			}
		})
	}
	return acc
}

func ref(a connector.Account) connector.AccountRef {
	return connector.AccountRef{ID: a.ID, Username: a.Username}
}

func get(t *testing.T, c connector.Connector, r connector.AccountRef) connector.Account {
	t.Helper()
	acc, err := c.GetAccount(t.Context(), r)
	if err != nil {
		t.Fatalf("GetAccount(%+v): %v", r, err)
	}
	return acc
}

func wantState(t *testing.T, c connector.Connector, r connector.AccountRef, want connector.AccountState) {
	t.Helper()
	if got := get(t, c, r).State; got != want {
		t.Fatalf("GetAccount(%+v).State = %v, want %v", r, got, want)
	}
}

func wantNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, connector.ErrNotFound) {
		t.Fatalf("%s: error = %v, want one matching connector.ErrNotFound", what, err)
	}
	if k := connector.KindOf(err); k != connector.KindNotFound {
		t.Fatalf("%s: KindOf(%v) = %v, want %v", what, err, k, connector.KindNotFound)
	}
}

func (s *suite) testCapabilities(t *testing.T) {
	c := s.open(t)
	f := s.h.Features
	checks := []struct {
		feature  string
		declared bool
		has      bool
	}{
		{"Create", f.Create, is[connector.Creator](c)},
		{"Disable", f.Disable, is[connector.Disabler](c)},
		{"Enable", f.Enable, is[connector.Enabler](c)},
		{"Delete", f.Delete, is[connector.Deleter](c)},
		{"Entitlements", f.Entitlements, is[connector.EntitlementGranter](c)},
		{"Sessions", f.Sessions, is[connector.SessionRevoker](c)},
		{"List", f.List, is[connector.Lister](c)},
		{"Credentials", f.Credentials, is[connector.CredentialRevoker](c)},
	}
	for _, ch := range checks {
		switch {
		case ch.declared && !ch.has:
			t.Errorf("Features.%s is set but %T does not implement it", ch.feature, c)
		case !ch.declared && ch.has:
			t.Errorf("%T implements %s but Features.%s is false; declare it so the suite tests it", c, ch.feature, ch.feature)
		}
	}
	t.Logf("capabilities: %v", connector.Capabilities(c))
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func is[T any](c connector.Connector) bool {
	_, ok := c.(T)
	return ok
}

func (s *suite) testGetUnknown(t *testing.T) {
	c := s.open(t)
	_, err := c.GetAccount(t.Context(), connector.AccountRef{Username: s.h.NewUsername(t)})
	wantNotFound(t, "GetAccount of an unknown username", err)
}

func (s *suite) testCreate(t *testing.T) {
	c := s.open(t)
	spec := s.spec(t)
	created := s.create(t, c, spec)
	if created.ID == "" {
		t.Error("CreateAccount returned an empty ID")
	}
	if created.Username != spec.Username {
		t.Errorf("CreateAccount Username = %q, want %q", created.Username, spec.Username)
	}
	if created.State != connector.StateEnabled {
		t.Errorf("CreateAccount State = %v, want enabled", created.State)
	}
	// Hosts look accounts up by the stored ID, by username alone (reconciliation, no link yet)
	// and by both.
	for _, r := range []connector.AccountRef{
		{ID: created.ID, Username: spec.Username},
		{ID: created.ID},
		{Username: spec.Username},
	} {
		got := get(t, c, r)
		if got.ID != created.ID || got.Username != spec.Username {
			t.Errorf("GetAccount(%+v) = ID %q Username %q, want %q %q", r, got.ID, got.Username, created.ID, spec.Username)
		}
		if got.State != connector.StateEnabled {
			t.Errorf("GetAccount(%+v).State = %v, want enabled", r, got.State)
		}
		if s.h.Features.Profile && (got.Email != spec.Email || got.DisplayName != spec.DisplayName) {
			t.Errorf("GetAccount(%+v) = Email %q DisplayName %q, want %q %q", r, got.Email, got.DisplayName, spec.Email, spec.DisplayName)
		}
		for _, e := range got.Entitlements {
			if slices.Contains(s.h.Entitlements, e) {
				t.Errorf("new account created without entitlements holds %q", e)
			}
		}
	}
}

func (s *suite) testCreateIdempotent(t *testing.T) {
	c := s.open(t)
	spec := s.spec(t)
	first := s.create(t, c, spec)
	again, err := c.(connector.Creator).CreateAccount(t.Context(), spec)
	if err != nil {
		t.Fatalf("CreateAccount of an existing username: %v (want the existing account)", err)
	}
	if again.ID != first.ID {
		t.Fatalf("second CreateAccount ID = %q, want the existing %q", again.ID, first.ID)
	}
	if !s.h.Features.Disable {
		return
	}
	// A joiner event that arrives after the termination must not re-enable the account.
	if err := c.(connector.Disabler).DisableAccount(t.Context(), ref(first)); err != nil {
		t.Fatalf("DisableAccount: %v", err)
	}
	late, err := c.(connector.Creator).CreateAccount(t.Context(), spec)
	if err != nil {
		t.Fatalf("CreateAccount of a disabled account: %v", err)
	}
	if late.State != connector.StateDisabled {
		t.Errorf("CreateAccount of a disabled account returned State %v, want disabled (unchanged)", late.State)
	}
	wantState(t, c, ref(first), connector.StateDisabled)
}

func (s *suite) testCreateWithEntitlements(t *testing.T) {
	c := s.open(t)
	spec := s.spec(t)
	spec.Entitlements = []string{s.h.Entitlements[0]}
	acc := s.create(t, c, spec)
	if got := get(t, c, ref(acc)).Entitlements; !slices.Contains(got, s.h.Entitlements[0]) {
		t.Fatalf("account created with %q holds %v", s.h.Entitlements[0], got)
	}
}

func (s *suite) testDisable(t *testing.T) {
	c := s.open(t)
	acc := s.create(t, c, s.spec(t))
	d := c.(connector.Disabler)
	if err := d.DisableAccount(t.Context(), ref(acc)); err != nil {
		t.Fatalf("DisableAccount: %v", err)
	}
	wantState(t, c, ref(acc), connector.StateDisabled)
	if err := d.DisableAccount(t.Context(), ref(acc)); err != nil {
		t.Fatalf("DisableAccount of a disabled account: %v (want success)", err)
	}
	wantState(t, c, ref(acc), connector.StateDisabled)
	// The leaver path often has only the username (an account found by reconciliation).
	if err := d.DisableAccount(t.Context(), connector.AccountRef{Username: acc.Username}); err != nil {
		t.Fatalf("DisableAccount by username: %v", err)
	}
	err := d.DisableAccount(t.Context(), connector.AccountRef{Username: s.h.NewUsername(t)})
	wantNotFound(t, "DisableAccount of an unknown username", err)
}

func (s *suite) testEnable(t *testing.T) {
	c := s.open(t)
	acc := s.create(t, c, s.spec(t))
	if err := c.(connector.Disabler).DisableAccount(t.Context(), ref(acc)); err != nil {
		t.Fatalf("DisableAccount: %v", err)
	}
	e := c.(connector.Enabler)
	if err := e.EnableAccount(t.Context(), ref(acc)); err != nil {
		t.Fatalf("EnableAccount: %v", err)
	}
	wantState(t, c, ref(acc), connector.StateEnabled)
	if err := e.EnableAccount(t.Context(), ref(acc)); err != nil {
		t.Fatalf("EnableAccount of an enabled account: %v (want success)", err)
	}
	wantState(t, c, ref(acc), connector.StateEnabled)
	err := e.EnableAccount(t.Context(), connector.AccountRef{Username: s.h.NewUsername(t)})
	wantNotFound(t, "EnableAccount of an unknown username", err)
}

func (s *suite) testEntitlements(t *testing.T) {
	c := s.open(t)
	acc := s.create(t, c, s.spec(t))
	g := c.(connector.EntitlementGranter)
	holds := func() []string { return get(t, c, ref(acc)).Entitlements }

	for _, e := range s.h.Entitlements {
		if err := g.GrantEntitlement(t.Context(), ref(acc), e); err != nil {
			t.Fatalf("GrantEntitlement(%q): %v", e, err)
		}
		if got := holds(); !slices.Contains(got, e) {
			t.Fatalf("after GrantEntitlement(%q) the account holds %v", e, got)
		}
		if err := g.GrantEntitlement(t.Context(), ref(acc), e); err != nil {
			t.Fatalf("GrantEntitlement(%q) of a held entitlement: %v (want success)", e, err)
		}
	}
	if got := holds(); !containsAll(got, s.h.Entitlements) {
		t.Fatalf("after granting %v the account holds %v", s.h.Entitlements, got)
	}
	for i, e := range s.h.Entitlements {
		if err := g.RevokeEntitlement(t.Context(), ref(acc), e); err != nil {
			t.Fatalf("RevokeEntitlement(%q): %v", e, err)
		}
		got := holds()
		if slices.Contains(got, e) {
			t.Fatalf("after RevokeEntitlement(%q) the account holds %v", e, got)
		}
		// Revoking one entitlement leaves the others alone.
		for _, other := range s.h.Entitlements[i+1:] {
			if !slices.Contains(got, other) {
				t.Fatalf("RevokeEntitlement(%q) also removed %q (holds %v)", e, other, got)
			}
		}
		if err := g.RevokeEntitlement(t.Context(), ref(acc), e); err != nil {
			t.Fatalf("RevokeEntitlement(%q) of an entitlement not held: %v (want success)", e, err)
		}
	}

	// Retrying a grant the target can never honour only delays the operator who must fix it.
	const bogus = "tenure-conformance-no-such-entitlement"
	err := g.GrantEntitlement(t.Context(), ref(acc), bogus)
	if err == nil {
		t.Fatalf("GrantEntitlement(%q) succeeded, want an error", bogus)
	}
	if k := connector.KindOf(err); k == connector.KindRetryable {
		t.Fatalf("GrantEntitlement(%q) error %q is %v, want it permanent", bogus, err, k)
	}
	err = g.GrantEntitlement(t.Context(), connector.AccountRef{Username: s.h.NewUsername(t)}, s.h.Entitlements[0])
	wantNotFound(t, "GrantEntitlement to an unknown username", err)
}

func (s *suite) testRevokeSessions(t *testing.T) {
	c := s.open(t)
	acc := s.create(t, c, s.spec(t))
	if err := c.(connector.SessionRevoker).RevokeSessions(t.Context(), ref(acc)); err != nil {
		t.Fatalf("RevokeSessions: %v", err)
	}
	// Ending sessions is not disabling: the account may sign in again.
	wantState(t, c, ref(acc), connector.StateEnabled)
	if err := c.(connector.SessionRevoker).RevokeSessions(t.Context(), ref(acc)); err != nil {
		t.Fatalf("RevokeSessions with no sessions: %v", err)
	}
}

func (s *suite) testRevokeCredentials(t *testing.T) {
	if s.h.Credentials != nil && (s.h.Credentials.Give == nil || s.h.Credentials.Works == nil) {
		t.Fatal("Harness.Credentials needs both Give and Works")
	}
	c := s.open(t)
	acc := s.create(t, c, s.spec(t))
	r := c.(connector.CredentialRevoker)
	probe := s.h.Credentials
	if probe != nil {
		probe.Give(t, c, acc)
		if !probe.Works(t, c, acc) {
			t.Fatal("CredentialProbe: the credential Give set does not work before RevokeCredentials")
		}
	}
	if err := r.RevokeCredentials(t.Context(), ref(acc)); err != nil {
		t.Fatalf("RevokeCredentials: %v", err)
	}
	if probe != nil && probe.Works(t, c, acc) {
		t.Fatal("the account's credential still works after RevokeCredentials")
	}
	// Revoking credentials is not disabling: the state is left as it was.
	wantState(t, c, ref(acc), connector.StateEnabled)
	if err := r.RevokeCredentials(t.Context(), ref(acc)); err != nil {
		t.Fatalf("RevokeCredentials of revoked credentials: %v (want success)", err)
	}
	if s.h.Features.Disable {
		// The leaver path: disable, then revoke; the account stays disabled, and
		// re-enabling it (a rescinded termination) gives no credential back.
		if err := c.(connector.Disabler).DisableAccount(t.Context(), ref(acc)); err != nil {
			t.Fatalf("DisableAccount: %v", err)
		}
		if err := r.RevokeCredentials(t.Context(), connector.AccountRef{Username: acc.Username}); err != nil {
			t.Fatalf("RevokeCredentials of a disabled account by username: %v", err)
		}
		wantState(t, c, ref(acc), connector.StateDisabled)
		if s.h.Features.Enable {
			if err := c.(connector.Enabler).EnableAccount(t.Context(), ref(acc)); err != nil {
				t.Fatalf("EnableAccount: %v", err)
			}
			if probe != nil && probe.Works(t, c, acc) {
				t.Fatal("re-enabling the account brought its revoked credential back")
			}
		}
	}
	err := r.RevokeCredentials(t.Context(), connector.AccountRef{Username: s.h.NewUsername(t)})
	wantNotFound(t, "RevokeCredentials of an unknown username", err)
}

func (s *suite) testList(t *testing.T) {
	c := s.open(t)
	// Three accounts so connectors with a small page size are seen paging.
	want := map[string]string{} // username -> ID
	for range 3 {
		acc := s.create(t, c, s.spec(t))
		want[acc.Username] = acc.ID
	}
	l := c.(connector.Lister)
	token := ""
	seen := map[string]bool{}
	for page := 0; ; page++ {
		if page == maxPages {
			t.Fatalf("ListAccounts: still not done after %d pages", maxPages)
		}
		accs, next, err := l.ListAccounts(t.Context(), token)
		if err != nil {
			t.Fatalf("ListAccounts(%q): %v", token, err)
		}
		for _, a := range accs {
			if a.ID == "" || a.Username == "" {
				t.Errorf("ListAccounts returned an account without ID or Username: %+v", a)
			}
			if seen[a.ID] {
				t.Errorf("ListAccounts returned %q (ID %q) twice", a.Username, a.ID)
			}
			seen[a.ID] = true
			if id, ok := want[a.Username]; ok {
				if a.ID != id {
					t.Errorf("ListAccounts: %q has ID %q, want %q", a.Username, a.ID, id)
				}
				if a.State != connector.StateEnabled {
					t.Errorf("ListAccounts: %q has State %v, want enabled", a.Username, a.State)
				}
				delete(want, a.Username)
			}
		}
		if next == "" {
			break
		}
		if next == token {
			t.Fatalf("ListAccounts(%q) returned the same token as next: the listing would never end", token)
		}
		token = next
	}
	for u := range want {
		t.Errorf("ListAccounts did not return %q", u)
	}
}

func (s *suite) testDelete(t *testing.T) {
	c := s.open(t)
	acc, err := c.(connector.Creator).CreateAccount(t.Context(), s.spec(t))
	if err != nil {
		t.Fatalf("CreateAccount: %v", err)
	}
	d := c.(connector.Deleter)
	if err := d.DeleteAccount(t.Context(), ref(acc)); err != nil {
		t.Fatalf("DeleteAccount: %v", err)
	}
	_, err = c.GetAccount(t.Context(), ref(acc))
	wantNotFound(t, "GetAccount after DeleteAccount", err)
	_, err = c.GetAccount(t.Context(), connector.AccountRef{ID: acc.ID})
	wantNotFound(t, "GetAccount by ID after DeleteAccount", err)
	if err := d.DeleteAccount(t.Context(), ref(acc)); err != nil {
		t.Fatalf("DeleteAccount of a deleted account: %v (want success)", err)
	}
	if s.h.Features.Disable {
		err := c.(connector.Disabler).DisableAccount(t.Context(), ref(acc))
		wantNotFound(t, "DisableAccount after DeleteAccount", err)
	}
}
