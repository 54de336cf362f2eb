package ldap_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/connectors/ldap"
)

// config is the YAML an operator would write for the test directory.
func (s *slapd) config(extra string) []byte {
	return fmt.Appendf(nil, `url: %s
bind_dn: %s
bind_password: %s
base_dn: %s
group_base_dn: %s
groups: [readers, writers]
%s`, s.URL, adminDN, adminPW, peopleDN, groupsDN, extra)
}

func (s *slapd) open(t *testing.T, extra string) connector.Connector {
	t.Helper()
	c, err := connector.Open(t.Context(), ldap.TypeName, s.config(extra))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { connector.Close(c) })
	return c
}

func TestConformance(t *testing.T) {
	srv := startSlapd(t)
	connectortest.Run(t, connectortest.Harness{
		New: func(t *testing.T) connector.Connector {
			// A page size of 2 makes the suite's three accounts span pages.
			c, err := connector.Open(t.Context(), ldap.TypeName, srv.config("page_size: 2\n"))
			if err != nil {
				t.Fatal(err)
			}
			return c
		},
		Features: connectortest.Features{
			Create: true, Disable: true, Enable: true, Delete: true,
			Entitlements: true, List: true, Credentials: true, Profile: true,
		},
		Entitlements: []string{"readers", "writers"},
		// A password set by the directory's administrator, tried with a real bind.
		Credentials: &connectortest.CredentialProbe{
			Give: func(t *testing.T, _ connector.Connector, acc connector.Account) {
				set := goldap.NewModifyRequest("uid="+acc.Username+","+peopleDN, nil)
				set.Replace("userPassword", []string{"pw-" + acc.Username})
				if err := srv.admin(t).Modify(set); err != nil {
					t.Fatal(err)
				}
			},
			Works: func(t *testing.T, _ connector.Connector, acc connector.Account) bool {
				return srv.bind("uid="+acc.Username+","+peopleDN, "pw-"+acc.Username) == nil
			},
		},
	})
}

// A leaver's password no longer binds, and unlocking the account (a rescinded termination)
// does not bring it back.
func TestRevokeCredentialsStopsBind(t *testing.T) {
	srv := startSlapd(t)
	c := srv.open(t, "")
	ctx := t.Context()
	acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "carol", GivenName: "Carol", FamilyName: "Danvers"})
	if err != nil {
		t.Fatal(err)
	}
	const dn = "uid=carol," + peopleDN
	const pw = "carol-pw-1"
	admin := srv.admin(t)
	set := goldap.NewModifyRequest(dn, nil)
	set.Replace("userPassword", []string{pw})
	if err := admin.Modify(set); err != nil {
		t.Fatal(err)
	}
	if err := srv.bind(dn, pw); err != nil {
		t.Fatalf("an enabled account cannot bind: %v", err)
	}
	ref := connector.AccountRef{ID: acc.ID, Username: "carol"}
	if err := c.(connector.Disabler).DisableAccount(ctx, ref); err != nil {
		t.Fatal(err)
	}
	r := c.(connector.CredentialRevoker)
	if err := r.RevokeCredentials(ctx, ref); err != nil {
		t.Fatalf("RevokeCredentials: %v", err)
	}
	if got := rawEntry(t, admin, dn, "userPassword").GetAttributeValues("userPassword"); len(got) != 0 {
		t.Fatalf("userPassword still set after RevokeCredentials (%d values)", len(got))
	}
	if err := r.RevokeCredentials(ctx, ref); err != nil {
		t.Fatalf("RevokeCredentials without a password: %v (want success)", err)
	}
	if got, _ := c.GetAccount(ctx, ref); got.State != connector.StateDisabled {
		t.Fatalf("State = %v after RevokeCredentials", got.State)
	}
	if err := c.(connector.Enabler).EnableAccount(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if err := srv.bind(dn, pw); !goldap.IsErrorWithCode(err, goldap.LDAPResultInvalidCredentials) {
		t.Fatalf("bind with the revoked password after EnableAccount: %v, want 49 invalid credentials", err)
	}
	err = r.RevokeCredentials(ctx, connector.AccountRef{Username: "nobody"})
	if !errors.Is(err, connector.ErrNotFound) {
		t.Fatalf("RevokeCredentials of an unknown user: %v", err)
	}
}

// The point of disabling: the person can no longer bind, and can again after enabling.
func TestDisableStopsBind(t *testing.T) {
	srv := startSlapd(t)
	c := srv.open(t, "")
	ctx := t.Context()
	acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{
		WorkerID: "W-1001", Username: "alice", Email: "alice@example.org",
		GivenName: "Alice", FamilyName: "Liddell", DisplayName: "Alice Liddell",
	})
	if err != nil {
		t.Fatal(err)
	}
	const dn = "uid=alice," + peopleDN
	const pw = "alice-pw-1"
	admin := srv.admin(t)
	// tenure sets no passwords; the directory's own process would.
	set := goldap.NewModifyRequest(dn, nil)
	set.Replace("userPassword", []string{pw})
	if err := admin.Modify(set); err != nil {
		t.Fatal(err)
	}
	if err := srv.bind(dn, pw); err != nil {
		t.Fatalf("an enabled account cannot bind: %v", err)
	}
	entry := rawEntry(t, admin, dn, "employeeNumber", "mail", "sn", "givenName", "objectClass")
	if entry.GetAttributeValue("employeeNumber") != "W-1001" || entry.GetAttributeValue("sn") != "Liddell" ||
		!slices.Contains(entry.GetAttributeValues("objectClass"), "inetOrgPerson") {
		t.Errorf("created entry: %v", entry.Attributes)
	}

	ref := connector.AccountRef{ID: acc.ID, Username: "alice"}
	if err := c.(connector.Disabler).DisableAccount(ctx, ref); err != nil {
		t.Fatalf("DisableAccount: %v", err)
	}
	if got := rawEntry(t, admin, dn, "pwdAccountLockedTime").GetAttributeValue("pwdAccountLockedTime"); got != "000001010000Z" {
		t.Errorf("pwdAccountLockedTime = %q", got)
	}
	err = srv.bind(dn, pw)
	if !goldap.IsErrorWithCode(err, goldap.LDAPResultInvalidCredentials) {
		t.Fatalf("bind after DisableAccount: %v, want 49 invalid credentials", err)
	}
	if got, _ := c.GetAccount(ctx, ref); got.State != connector.StateDisabled {
		t.Errorf("State = %v after disable", got.State)
	}

	if err := c.(connector.Enabler).EnableAccount(ctx, ref); err != nil {
		t.Fatalf("EnableAccount: %v", err)
	}
	if err := srv.bind(dn, pw); err != nil {
		t.Fatalf("bind after EnableAccount: %v", err)
	}
	if got := rawEntry(t, admin, dn, "pwdAccountLockedTime").GetAttributeValues("pwdAccountLockedTime"); len(got) != 0 {
		t.Errorf("pwdAccountLockedTime still %v after enable", got)
	}
}

func rawEntry(t *testing.T, conn *goldap.Conn, dn string, attrs ...string) *goldap.Entry {
	t.Helper()
	res, err := conn.Search(goldap.NewSearchRequest(dn, goldap.ScopeBaseObject, goldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=*)", attrs, nil))
	if err != nil || len(res.Entries) != 1 {
		t.Fatalf("read %s: %v", dn, err)
	}
	return res.Entries[0]
}

// Memberships land in the member attribute the group's class uses, and deleting a user
// leaves no dangling member values.
func TestGroupMembershipInDirectory(t *testing.T) {
	srv := startSlapd(t)
	c := srv.open(t, "")
	ctx := t.Context()
	acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "bob", Entitlements: []string{"readers", "writers"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(acc.Entitlements, []string{"readers", "writers"}) {
		t.Errorf("Entitlements = %v", acc.Entitlements)
	}
	admin := srv.admin(t)
	const dn = "uid=bob," + peopleDN
	if m := rawEntry(t, admin, "cn=readers,"+groupsDN, "member").GetAttributeValues("member"); !slices.Contains(m, dn) {
		t.Errorf("readers (groupOfNames) member = %v", m)
	}
	if m := rawEntry(t, admin, "cn=writers,"+groupsDN, "uniqueMember").GetAttributeValues("uniqueMember"); !slices.Contains(m, dn) {
		t.Errorf("writers (groupOfUniqueNames) uniqueMember = %v", m)
	}
	// cn compares without case in the directory, and so do entitlement names.
	if err := c.(connector.EntitlementGranter).RevokeEntitlement(ctx, connector.AccountRef{ID: acc.ID}, "Readers"); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.GetAccount(ctx, connector.AccountRef{ID: acc.ID}); !slices.Equal(got.Entitlements, []string{"writers"}) {
		t.Errorf("after revoking Readers: %v", got.Entitlements)
	}
	if err := c.(connector.Deleter).DeleteAccount(ctx, connector.AccountRef{ID: acc.ID}); err != nil {
		t.Fatal(err)
	}
	if m := rawEntry(t, admin, "cn=readers,"+groupsDN, "member").GetAttributeValues("member"); slices.Contains(m, dn) {
		t.Errorf("deleted user still in readers: %v", m)
	}
	if m := rawEntry(t, admin, "cn=writers,"+groupsDN, "uniqueMember").GetAttributeValues("uniqueMember"); slices.Contains(m, dn) {
		t.Errorf("deleted user still in writers: %v", m)
	}
}

func TestListPaging(t *testing.T) {
	srv := startSlapd(t)
	c := srv.open(t, "page_size: 3\n")
	ctx := t.Context()
	want := map[string]string{}
	for i := range 10 {
		acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: fmt.Sprintf("user%02d", i)})
		if err != nil {
			t.Fatal(err)
		}
		want[acc.ID] = acc.Username
	}
	if err := c.(connector.EntitlementGranter).GrantEntitlement(ctx, connector.AccountRef{Username: "user07"}, "writers"); err != nil {
		t.Fatal(err)
	}
	if err := c.(connector.Disabler).DisableAccount(ctx, connector.AccountRef{Username: "user03"}); err != nil {
		t.Fatal(err)
	}
	token, pages := "", 0
	got := map[string]connector.Account{}
	var first string
	for {
		accs, next, err := c.(connector.Lister).ListAccounts(ctx, token)
		if err != nil {
			t.Fatalf("ListAccounts: %v", err)
		}
		pages++
		if len(accs) > 3 {
			t.Errorf("page of %d, page_size is 3", len(accs))
		}
		for _, a := range accs {
			got[a.ID] = a
		}
		if next == "" {
			break
		}
		if first == "" {
			first = next
		}
		if next == token || pages > 10 {
			t.Fatalf("token does not advance")
		}
		token = next
	}
	if pages != 4 {
		t.Errorf("10 users in pages of 3 took %d pages", pages)
	}
	for id, name := range want {
		a := got[id]
		if a.Username != name {
			t.Errorf("%s (%s) listed as %+v", name, id, a)
		}
		if wantState := connector.StateEnabled; name == "user03" && a.State != connector.StateDisabled || name != "user03" && a.State != wantState {
			t.Errorf("%s listed with State %v", name, a.State)
		}
		if wantEnts := []string(nil); name == "user07" && !slices.Equal(a.Entitlements, []string{"writers"}) || name != "user07" && !slices.Equal(a.Entitlements, wantEnts) {
			t.Errorf("%s listed with Entitlements %v", name, a.Entitlements)
		}
	}
	// A paged-results cookie belongs to its connection; after a reconnect the token is
	// refused plainly instead of returning a wrong page.
	connector.Close(c)
	_, _, err := c.(connector.Lister).ListAccounts(ctx, first)
	if connector.KindOf(err) != connector.KindPermanent || !strings.Contains(err.Error(), "start the listing again") {
		t.Errorf("stale token: %v", err)
	}
	if _, _, err := c.(connector.Lister).ListAccounts(ctx, "!!"); connector.KindOf(err) != connector.KindPermanent {
		t.Errorf("bad token: %v", err)
	}
}

func TestErrorKinds(t *testing.T) {
	srv := startSlapd(t)
	ctx := t.Context()
	c := srv.open(t, "")
	if _, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "carol"}); err != nil {
		t.Fatal(err)
	}
	ghostCfg := strings.Replace(string(srv.config("")), "groups: [readers, writers]", "groups: [readers, ghosts]", 1)
	ghost, err := connector.Open(ctx, ldap.TypeName, []byte(ghostCfg))
	if err != nil {
		t.Fatal(err)
	}
	defer connector.Close(ghost)
	wrongPW, err := connector.Open(ctx, ldap.TypeName, []byte(strings.Replace(string(srv.config("")), adminPW, "hunter2", 1)))
	if err != nil {
		t.Fatal(err)
	}
	defer connector.Close(wrongPW)
	noBase, err := connector.Open(ctx, ldap.TypeName, []byte(strings.Replace(string(srv.config("")), "base_dn: "+peopleDN, "base_dn: ou=nowhere,"+suffix, 1)))
	if err != nil {
		t.Fatal(err)
	}
	defer connector.Close(noBase)
	down, err := connector.Open(ctx, ldap.TypeName, []byte(strings.Replace(string(srv.config("timeout: 2s\n")), srv.URL, "ldap://127.0.0.1:1", 1)))
	if err != nil {
		t.Fatalf("Open must not connect: %v", err)
	}
	defer connector.Close(down)

	carol := connector.AccountRef{Username: "carol"}
	tests := []struct {
		name string
		err  error
		want connector.ErrorKind
		msg  string
	}{
		{"wrong bind password", func() error { _, err := wrongPW.GetAccount(ctx, carol); return err }(), connector.KindPermanent, "invalid credentials"},
		{"unreachable", func() error { _, err := down.GetAccount(ctx, carol); return err }(), connector.KindRetryable, "connect"},
		{"missing base_dn", func() error { _, err := noBase.GetAccount(ctx, carol); return err }(), connector.KindPermanent, "base_dn"},
		{"unconfigured group", c.(connector.EntitlementGranter).GrantEntitlement(ctx, carol, "admins"), connector.KindPermanent, "not a configured group"},
		{"group missing in directory", ghost.(connector.EntitlementGranter).GrantEntitlement(ctx, carol, "ghosts"), connector.KindPermanent, "no group with cn=ghosts"},
		{"bad id", func() error { _, err := c.GetAccount(ctx, connector.AccountRef{ID: "nope"}); return err }(), connector.KindPermanent, "not an entryUUID"},
		{"empty ref", func() error { _, err := c.GetAccount(ctx, connector.AccountRef{}); return err }(), connector.KindPermanent, "empty"},
		{"bad username", func() error {
			_, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: " x"})
			return err
		}(), connector.KindPermanent, "must be"},
		{"unknown", func() error { _, err := c.GetAccount(ctx, connector.AccountRef{Username: "nobody"}); return err }(), connector.KindNotFound, "no entry"},
		{"unknown id", func() error {
			_, err := c.GetAccount(ctx, connector.AccountRef{ID: "00000000-0000-0000-0000-000000000000"})
			return err
		}(), connector.KindNotFound, "no entry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.err == nil {
				t.Fatal("no error")
			}
			if k := connector.KindOf(tt.err); k != tt.want {
				t.Errorf("KindOf(%v) = %v, want %v", tt.err, k, tt.want)
			}
			if !strings.Contains(tt.err.Error(), tt.msg) {
				t.Errorf("error %q does not say %q", tt.err, tt.msg)
			}
			if strings.Contains(tt.err.Error(), "hunter2") || strings.Contains(tt.err.Error(), adminPW) {
				t.Errorf("error leaks a password: %v", tt.err)
			}
		})
	}
	// Reading an account while a configured group is missing still works: a typo in the
	// group list must not block a leaver's read-back.
	if got, err := ghost.GetAccount(ctx, carol); err != nil || got.State != connector.StateEnabled {
		t.Errorf("GetAccount with a missing group configured: %+v, %v", got, err)
	}
	// Special characters reach the directory escaped, in filters and in the DN.
	for _, name := range []string{`o*neil`, `a,b+c`, `par(en)`, `back\slash`, `#hash`} {
		acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: name})
		if err != nil {
			t.Errorf("CreateAccount(%q): %v", name, err)
			continue
		}
		if got, err := c.GetAccount(ctx, connector.AccountRef{Username: name}); err != nil || got.ID != acc.ID {
			t.Errorf("GetAccount(%q) = %+v, %v", name, got, err)
		}
	}
	if _, err := c.GetAccount(ctx, connector.AccountRef{Username: "o*"}); !errors.Is(err, connector.ErrNotFound) {
		t.Errorf("a wildcard username matched: %v", err)
	}
}

// The bind password and identity data travel encrypted: ldaps:// and StartTLS both verify the
// server against ca_file, and a server the CA did not sign is refused.
func TestTLS(t *testing.T) {
	srv := startSlapdTLS(t)
	ctx := t.Context()
	plain := string(srv.config(""))
	for _, tt := range []struct{ name, config string }{
		{"ldaps", strings.Replace(plain, srv.URL, srv.LDAPSURL, 1) + "ca_file: " + srv.CAFile + "\n"},
		{"starttls", plain + "start_tls: true\nca_file: " + srv.CAFile + "\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := connector.Open(ctx, ldap.TypeName, []byte(tt.config))
			if err != nil {
				t.Fatal(err)
			}
			defer connector.Close(c)
			acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "tls-" + tt.name})
			if err != nil {
				t.Fatalf("CreateAccount over %s: %v", tt.name, err)
			}
			if err := c.(connector.Disabler).DisableAccount(ctx, connector.AccountRef{ID: acc.ID}); err != nil {
				t.Fatalf("DisableAccount over %s: %v", tt.name, err)
			}
		})
	}
	for _, tt := range []struct{ name, config string }{
		{"ldaps without the CA", strings.Replace(plain, srv.URL, srv.LDAPSURL, 1)},
		{"starttls without the CA", plain + "start_tls: true\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := connector.Open(ctx, ldap.TypeName, []byte(tt.config))
			if err != nil {
				t.Fatal(err)
			}
			defer connector.Close(c)
			_, err = c.GetAccount(ctx, connector.AccountRef{Username: "x"})
			if err == nil || !strings.Contains(err.Error(), "certificate") {
				t.Fatalf("untrusted server: %v, want a certificate error", err)
			}
		})
	}
}

func TestConfig(t *testing.T) {
	base := "bind_dn: cn=admin,dc=x\nbind_password: pw\nbase_dn: ou=people,dc=x\n"
	tests := []struct {
		name, config, want string
	}{
		{"unknown field", "url: ldap://127.0.0.1\n" + base + "bind_pw: x\n", `line 5: unknown field "bind_pw"`},
		{"no url", base, "url is required"},
		{"bad scheme", "url: http://x\n" + base, "must be ldap://"},
		{"plaintext remote", "url: ldap://ldap.example.org\n" + base, "unencrypted"},
		{"starttls on ldaps", "url: ldaps://ldap.example.org\nstart_tls: true\n" + base, "start_tls is for ldap://"},
		{"credentials in url", "url: ldaps://u:hunter2@ldap.example.org\n" + base, "must not contain credentials"},
		{"no bind_dn", "url: ldaps://x\nbind_password: pw\nbase_dn: dc=x\n", "bind_dn is required"},
		{"no password", "url: ldaps://x\nbind_dn: cn=a\nbase_dn: dc=x\n", "bind_password is required"},
		{"bad base_dn", "url: ldaps://x\nbind_dn: cn=a\nbind_password: pw\nbase_dn: nonsense\n", "not a DN"},
		{"groups without base", "url: ldaps://x\n" + base + "groups: [a]\n", "group_base_dn is required"},
		{"bad mode", "url: ldaps://x\n" + base + "mode: novell\n", "mode \"novell\""},
		{"bad filter", "url: ldaps://x\n" + base + "user_filter: objectClass=person\n", "user_filter"},
		{"duplicate group", "url: ldaps://x\n" + base + "group_base_dn: ou=g,dc=x\ngroups: [a, A]\n", "listed twice"},
		{"unset env", "url: ldaps://x\nbind_dn: cn=a\nbind_password: {env: TENURE_TEST_UNSET_LDAP}\nbase_dn: dc=x\n", "TENURE_TEST_UNSET_LDAP is not set"},
		{"missing ca", "url: ldaps://x\n" + base + "ca_file: /nonexistent/ca.pem\n", "ca_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := connector.Open(t.Context(), ldap.TypeName, []byte(tt.config))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error leaks a secret: %v", err)
			}
		})
	}
	for _, cfg := range []string{
		"url: ldaps://ldap.example.org\n" + base,
		"url: ldap://ldap.example.org\nstart_tls: true\n" + base,
		"url: ldap://ldap.internal\nallow_insecure: true\n" + base,
		"url: ldaps://dc1.corp.example\nmode: active_directory\n" + base,
	} {
		if _, err := connector.Open(t.Context(), ldap.TypeName, []byte(cfg)); err != nil {
			t.Errorf("%q: %v", cfg, err)
		}
	}
	if !slices.Contains(connector.Types(), "ldap") {
		t.Errorf("ldap is not registered: %v", connector.Types())
	}
}
