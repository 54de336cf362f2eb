package pgrole_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/connectors/pgrole"
	"github.com/tenure-dev/tenure/pkg/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

var seq atomic.Int64

// target is one test's slice of the shared cluster. Roles are cluster-wide, so each test gets
// its own prefix and group names; the pid keeps test binaries sharing a server apart.
type target struct {
	url    string // superuser URL of the test's database
	prefix string
	groups []string
}

func newTarget(t *testing.T) target {
	t.Helper()
	n := seq.Add(1)
	tg := target{
		url:    pgtest.NewDatabase(t),
		prefix: fmt.Sprintf("t%d_%d_", os.Getpid(), n),
		groups: []string{fmt.Sprintf("g%d_%d_read", os.Getpid(), n), fmt.Sprintf("g%d_%d_write", os.Getpid(), n)},
	}
	t.Cleanup(func() { tg.dropAll(t) })
	return tg
}

// dropAll removes what the test left in the cluster: accounts a failing test did not delete,
// and the groups.
func (tg target) dropAll(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, tg.url)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer conn.Close(ctx)
	rows, _ := conn.Query(ctx, `SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1) OR rolname = ANY($2)`, tg.prefix, tg.groups)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	for _, n := range names {
		if _, err := conn.Exec(ctx, "DROP ROLE "+pgx.Identifier{n}.Sanitize()); err != nil {
			t.Errorf("cleanup: drop %s: %v", n, err)
		}
	}
}

// config is the YAML an operator would write for this target.
func (tg target) config(extra string) []byte {
	return fmt.Appendf(nil, "url: %q\nrole_prefix: %s\ngroups: [%s]\ncreate_groups: true\n%s",
		tg.url, tg.prefix, strings.Join(tg.groups, ", "), extra)
}

// open opens the connector through the registry, as the provisioner does.
func (tg target) open(t *testing.T, extra string) connector.Connector {
	t.Helper()
	c, err := connector.Open(t.Context(), pgrole.TypeName, tg.config(extra))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { connector.Close(c) })
	return c
}

// roleURL is a URL that logs into the test database as the managed role for username. The
// test cluster uses trust authentication, so only LOGIN decides whether it works.
func (tg target) roleURL(t *testing.T, username string) string {
	t.Helper()
	u, err := url.Parse(tg.url)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(tg.prefix + username)
	return u.String()
}

func TestConformance(t *testing.T) {
	tg := newTarget(t)
	connectortest.Run(t, connectortest.Harness{
		New: func(t *testing.T) connector.Connector {
			// A page size of 2 makes the suite's three accounts span pages.
			c, err := connector.Open(t.Context(), pgrole.TypeName, tg.config("page_size: 2\n"))
			if err != nil {
				t.Fatal(err)
			}
			return c
		},
		Features: connectortest.Features{
			Create: true, Disable: true, Enable: true, Delete: true,
			Entitlements: true, Sessions: true, List: true, Credentials: true, Profile: true,
		},
		Entitlements: tg.groups,
		Credentials: &connectortest.CredentialProbe{
			Give: func(t *testing.T, _ connector.Connector, acc connector.Account) {
				tg.setPassword(t, acc.Username, "pw-"+acc.Username)
			},
			Works: func(t *testing.T, _ connector.Connector, acc connector.Account) bool {
				return tg.hasPassword(t, acc.Username)
			},
		},
	})
}

// setPassword gives the managed role a password, as a DBA (or the person) would.
func (tg target) setPassword(t *testing.T, username, pw string) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), tg.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	lit, err := conn.PgConn().EscapeString(pw)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), "ALTER ROLE "+pgx.Identifier{tg.prefix + username}.Sanitize()+" PASSWORD '"+lit+"'"); err != nil {
		t.Fatal(err)
	}
}

// hasPassword reads pg_authid as the superuser (the connector's role need not be able to):
// the test cluster trusts local logins, so the stored verifier is what password
// authentication would check.
func (tg target) hasPassword(t *testing.T, username string) bool {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), tg.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var has bool
	if err := conn.QueryRow(t.Context(), "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = $1", tg.prefix+username).Scan(&has); err != nil {
		t.Fatal(err)
	}
	return has
}

// A leaver's password is gone from the catalog, whatever set it, and stays gone when the role
// is enabled again.
func TestRevokeCredentialsRemovesPassword(t *testing.T) {
	tg := newTarget(t)
	c := tg.open(t, "")
	ctx := t.Context()
	acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	tg.setPassword(t, "bob", "hunter2")
	if !tg.hasPassword(t, "bob") {
		t.Fatal("password not set")
	}
	ref := connector.AccountRef{ID: acc.ID, Username: "bob"}
	if err := c.(connector.Disabler).DisableAccount(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if err := c.(connector.CredentialRevoker).RevokeCredentials(ctx, ref); err != nil {
		t.Fatalf("RevokeCredentials: %v", err)
	}
	if tg.hasPassword(t, "bob") {
		t.Fatal("pg_authid.rolpassword is still set after RevokeCredentials")
	}
	if err := c.(connector.CredentialRevoker).RevokeCredentials(ctx, ref); err != nil {
		t.Fatalf("RevokeCredentials again: %v", err)
	}
	if got, _ := c.GetAccount(ctx, ref); got.State != connector.StateDisabled {
		t.Fatalf("State = %v", got.State)
	}
	if err := c.(connector.Enabler).EnableAccount(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if tg.hasPassword(t, "bob") {
		t.Fatal("enabling the role brought its password back")
	}
	err = c.(connector.CredentialRevoker).RevokeCredentials(ctx, connector.AccountRef{Username: "nobody"})
	if !errors.Is(err, connector.ErrNotFound) {
		t.Fatalf("RevokeCredentials of an unknown role: %v", err)
	}
}

func TestDisableStopsLoginAndEndsSessions(t *testing.T) {
	tg := newTarget(t)
	c := tg.open(t, "")
	ctx := t.Context()
	acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "alice", Email: "alice@example.test"})
	if err != nil {
		t.Fatal(err)
	}
	ref := connector.AccountRef{ID: acc.ID, Username: "alice"}

	session, err := pgx.Connect(ctx, tg.roleURL(t, "alice"))
	if err != nil {
		t.Fatalf("an enabled account cannot log in: %v", err)
	}
	defer session.Close(context.Background())
	var user string
	if err := session.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil || user != tg.prefix+"alice" {
		t.Fatalf("current_user = %q, %v", user, err)
	}

	if err := c.(connector.Disabler).DisableAccount(ctx, ref); err != nil {
		t.Fatalf("DisableAccount: %v", err)
	}
	// The session that was open before the disable is gone, not just new logins.
	if _, err := session.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a session opened before DisableAccount still runs queries")
	}
	wantLoginRefused(t, tg.roleURL(t, "alice"))
	if got, _ := c.GetAccount(ctx, ref); got.State != connector.StateDisabled {
		t.Fatalf("State = %v after disable", got.State)
	}

	if err := c.(connector.Enabler).EnableAccount(ctx, ref); err != nil {
		t.Fatalf("EnableAccount: %v", err)
	}
	again, err := pgx.Connect(ctx, tg.roleURL(t, "alice"))
	if err != nil {
		t.Fatalf("login after EnableAccount: %v", err)
	}
	again.Close(ctx)
}

func wantLoginRefused(t *testing.T, roleURL string) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), roleURL)
	if err == nil {
		conn.Close(t.Context())
		t.Fatal("a disabled account can still log in")
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, "not permitted to log in") {
		t.Fatalf("login error = %v, want SQLSTATE 28000 not permitted to log in", err)
	}
}

func TestRevokeSessionsKeepsLogin(t *testing.T) {
	tg := newTarget(t)
	c := tg.open(t, "")
	ctx := t.Context()
	acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	// Sessions in two databases: termination is cluster-wide.
	var sessions []*pgx.Conn
	for _, u := range []string{tg.roleURL(t, "bob"), strings.Replace(tg.roleURL(t, "bob"), pathOf(t, tg.url), "/postgres", 1)} {
		s, err := pgx.Connect(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(context.Background())
		sessions = append(sessions, s)
	}
	if err := c.(connector.SessionRevoker).RevokeSessions(ctx, connector.AccountRef{ID: acc.ID}); err != nil {
		t.Fatalf("RevokeSessions: %v", err)
	}
	for i, s := range sessions {
		if _, err := s.Exec(ctx, "SELECT 1"); err == nil {
			t.Errorf("session %d survived RevokeSessions", i)
		}
	}
	s, err := pgx.Connect(ctx, tg.roleURL(t, "bob"))
	if err != nil {
		t.Fatalf("login after RevokeSessions: %v", err)
	}
	s.Close(ctx)
}

func pathOf(t *testing.T, raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Path
}

func TestPrefixesKeepInstancesApart(t *testing.T) {
	a, b := newTarget(t), newTarget(t)
	ca, cb := a.open(t, ""), b.open(t, "")
	ctx := t.Context()
	acc, err := ca.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	defer ca.(connector.Deleter).DeleteAccount(context.Background(), connector.AccountRef{ID: acc.ID})
	for _, ref := range []connector.AccountRef{{Username: "carol"}, {ID: acc.ID}} {
		if _, err := cb.GetAccount(ctx, ref); !errors.Is(err, connector.ErrNotFound) {
			t.Errorf("another prefix's GetAccount(%+v) = %v, want ErrNotFound", ref, err)
		}
		if err := cb.(connector.Disabler).DisableAccount(ctx, ref); !errors.Is(err, connector.ErrNotFound) {
			t.Errorf("another prefix's DisableAccount(%+v) = %v, want ErrNotFound", ref, err)
		}
	}
	accs, _, err := cb.(connector.Lister).ListAccounts(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(accs) != 0 {
		t.Errorf("another prefix lists %+v", accs)
	}
	// An OID outside the prefix, such as the bootstrap superuser's, is not an account.
	if _, err := ca.GetAccount(ctx, connector.AccountRef{ID: "10"}); !errors.Is(err, connector.ErrNotFound) {
		t.Errorf("GetAccount of the superuser's OID = %v, want ErrNotFound", err)
	}
	if got, err := ca.GetAccount(ctx, connector.AccountRef{Username: "carol"}); err != nil || got.State != connector.StateEnabled {
		t.Errorf("own account: %+v, %v", got, err)
	}
}

func TestErrorKinds(t *testing.T) {
	tg := newTarget(t)
	ctx := t.Context()
	// Without create_groups a missing group is the operator's to fix, not a missing account.
	c, err := connector.Open(ctx, pgrole.TypeName, fmt.Appendf(nil, "url: %q\nrole_prefix: %s\ngroups: [%s]\n", tg.url, tg.prefix, tg.groups[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer connector.Close(c)
	acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "dave"})
	if err != nil {
		t.Fatal(err)
	}
	ref := connector.AccountRef{ID: acc.ID}
	g := c.(connector.EntitlementGranter)

	tests := []struct {
		name string
		err  error
		want connector.ErrorKind
		msg  string
	}{
		{"missing group", g.GrantEntitlement(ctx, ref, tg.groups[0]), connector.KindPermanent, "does not exist"},
		{"unconfigured group", g.GrantEntitlement(ctx, ref, tg.groups[1]), connector.KindPermanent, "not a configured group"},
		{"bad username", func() error {
			_, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "Eve Smith"})
			return err
		}(), connector.KindPermanent, "must be"},
		{"too long", func() error {
			_, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: strings.Repeat("x", 60)})
			return err
		}(), connector.KindPermanent, "longer than"},
		{"bad id", func() error { _, err := c.GetAccount(ctx, connector.AccountRef{ID: "abc"}); return err }(), connector.KindPermanent, "not a role OID"},
		{"empty ref", func() error { _, err := c.GetAccount(ctx, connector.AccountRef{}); return err }(), connector.KindPermanent, "empty"},
		{"bad page token", func() error { _, _, err := c.(connector.Lister).ListAccounts(ctx, "zzz"); return err }(), connector.KindPermanent, "page token"},
		{"unknown", func() error { _, err := c.GetAccount(ctx, connector.AccountRef{Username: "nobody"}); return err }(), connector.KindNotFound, "does not exist"},
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
		})
	}

	// A target that cannot be reached is worth retrying.
	down, err := connector.Open(ctx, pgrole.TypeName, []byte("url: postgres://x@127.0.0.1:1/x?connect_timeout=2\nrole_prefix: p_\n"))
	if err != nil {
		t.Fatalf("Open must not connect: %v", err)
	}
	defer connector.Close(down)
	_, err = down.GetAccount(ctx, connector.AccountRef{Username: "x"})
	if err == nil || connector.KindOf(err) != connector.KindRetryable {
		t.Errorf("unreachable target: %v (kind %v), want retryable", err, connector.KindOf(err))
	}
}

func TestDeleteOfRoleOwningObjects(t *testing.T) {
	tg := newTarget(t)
	c := tg.open(t, "")
	ctx := t.Context()
	acc, err := c.(connector.Creator).CreateAccount(ctx, connector.AccountSpec{Username: "erin"})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, tg.url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "CREATE TABLE notes (id int); ALTER TABLE notes OWNER TO "+pgx.Identifier{tg.prefix + "erin"}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	ref := connector.AccountRef{ID: acc.ID}
	err = c.(connector.Deleter).DeleteAccount(ctx, ref)
	if connector.KindOf(err) != connector.KindPermanent || !strings.Contains(err.Error(), "REASSIGN OWNED") {
		t.Fatalf("DeleteAccount of an owner = %v, want a permanent error naming REASSIGN OWNED", err)
	}
	// It could not be dropped, but it can no longer log in either.
	if got, err := c.GetAccount(ctx, ref); err != nil || got.State != connector.StateDisabled {
		t.Fatalf("after the failed delete: %+v, %v; want disabled", got, err)
	}
	if _, err := admin.Exec(ctx, "DROP TABLE notes"); err != nil {
		t.Fatal(err)
	}
	if err := c.(connector.Deleter).DeleteAccount(ctx, ref); err != nil {
		t.Fatal(err)
	}
}

func TestConfig(t *testing.T) {
	tg := newTarget(t)
	t.Setenv("TENURE_TEST_PG_URL", tg.url)
	// url from the environment, as in a deployment.
	c, err := connector.Open(t.Context(), pgrole.TypeName, fmt.Appendf(nil, "url: {env: TENURE_TEST_PG_URL}\nrole_prefix: %s\n", tg.prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer connector.Close(c)
	if _, err := c.GetAccount(t.Context(), connector.AccountRef{Username: "nobody"}); !errors.Is(err, connector.ErrNotFound) {
		t.Fatalf("GetAccount through an env URL: %v", err)
	}
	if !slices.Contains(connector.Types(), "postgres") {
		t.Errorf("Types() = %v, want postgres registered", connector.Types())
	}

	tests := []struct {
		name   string
		config string
		want   string
	}{
		{"unknown field", "url: postgres://x\nrole_prefix: p_\nmax_con: 3\n", `line 3: unknown field "max_con"`},
		{"no prefix", "url: postgres://x\n", "role_prefix is required"},
		{"no url", "role_prefix: p_\n", "url is required"},
		{"reserved prefix", "url: postgres://x\nrole_prefix: pg_x\n", "reserved"},
		{"bad prefix", "url: postgres://x\nrole_prefix: P x\n", "must be of"},
		{"group under prefix", "url: postgres://x\nrole_prefix: ehr_\ngroups: [ehr_read]\n", "would be listed as an account"},
		{"duplicate group", "url: postgres://x\nrole_prefix: ehr_\ngroups: [r, r]\n", "listed twice"},
		{"unset env", "url: {env: TENURE_TEST_UNSET_VAR}\nrole_prefix: p_\n", "TENURE_TEST_UNSET_VAR is not set"},
		{"bad url hides password", "url: \"postgres://u:hunter2@host:notaport/db\"\nrole_prefix: p_\n", "not a valid"},
		{"type mismatch", "url: postgres://x\nrole_prefix: p_\nmax_conns: many\n", "line 3:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := connector.Open(t.Context(), pgrole.TypeName, []byte(tt.config))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error leaks the password: %v", err)
			}
		})
	}
}
