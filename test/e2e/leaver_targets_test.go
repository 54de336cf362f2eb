package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"

	"github.com/tenure-dev/tenure/pkg/connectors/ldap/slapdtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// One leaver with 20 accounts in four kinds of real target, driven through the whole system
// (signed HR webhooks → intake → approval → provisioner → connectors → ledger):
//   - SCIM: the scimmy server from npm (test/scimserver), 6 accounts;
//   - LDAP: a private slapd with the ppolicy overlay, 6 accounts with passwords;
//   - PostgreSQL: login roles on the test cluster, 7 accounts, one with an open session;
//   - manual: a legacy system an operator switches off by hand, 1 account.
//
// The joiner's auto-approved packages create one account in each of SCIM, LDAP and
// PostgreSQL; the 17 others exist in the targets beforehand and are linked as reconciliation
// links them. The termination opens a case; the 19 automatic accounts are disabled and read
// back, the manual one waits for the operator, whose attestation (tenurectl task complete)
// completes the case. Then each target is checked directly, not through tenure.
func TestLeaverAcrossRealTargets(t *testing.T) {
	ctx := context.Background()
	_, tenurectl := binaries(t)
	ldapSrv := startSlapd(t)
	scimSrv := startSCIM(t)
	prefix := fmt.Sprintf("lt%d_", time.Now().UnixNano()%1_000_000)

	// Every package carries an entitlement: a package without one is never provisioned
	// (TestJoinerPackageWithoutEntitlements).
	policy := fmt.Sprintf(`systems:
  - {name: saas, holds_ephi: false, connector: saas}
  - {name: directory, holds_ephi: false, connector: directory}
  - {name: reporting, holds_ephi: false, connector: reporting}
  - {name: legacy, holds_ephi: false, connector: legacy}
packages:
  - {name: saas-user, system: saas, entitlements: [clinicians], auto_approve: true}
  - {name: directory-user, system: directory, entitlements: [clinicians], auto_approve: true}
  - {name: reporting-login, system: reporting, entitlements: [g%sclinicians], auto_approve: true}
roles:
  - {job_code: RN, packages: [saas-user, directory-user, reporting-login]}
`, prefix)
	if code := scimSrv.Call(t, "POST", "Groups", map[string]any{"schemas": []string{"urn:ietf:params:scim:schemas:core:2.0:Group"},
		"displayName": "clinicians"}, nil); code != 201 {
		t.Fatalf("SCIM POST Groups: %d", code)
	}
	// The connectors file is what an operator writes; pgtest's URL stands in for a DBA's.
	connectors := func(adminURL string) string {
		return fmt.Sprintf(`connectors:
  - name: saas
    type: scim
    config: {base_url: %q, token: %q, groups: [{entitlement: clinicians}]}
    policy: {backoff_initial: 100ms, backoff_max: 1s}
  - name: directory
    type: ldap
    config: {url: %q, bind_dn: %q, bind_password: %q, base_dn: %q, group_base_dn: %q, groups: [clinicians]}
    policy: {backoff_initial: 100ms, backoff_max: 1s}
  - name: reporting
    type: postgres
    config: {url: %q, role_prefix: %s, groups: [g%sclinicians], create_groups: true}
    policy: {backoff_initial: 100ms, backoff_max: 1s}
  - name: legacy
    type: manual
    config: {instructions: "Lock the user in the legacy pharmacy system (Admin > Users > Lock)."}
`, scimSrv.URL, scimToken, ldapSrv.URL, slapdtest.AdminDN, slapdtest.AdminPW, slapdtest.PeopleDN, slapdtest.GroupsDN, adminURL, prefix, prefix)
	}
	env := startStack(t, stackOptions{Policy: policy, ConnectorsFor: connectors})
	prov := provisionerv1.NewProvisioningServiceClient(dial(t, env.GRPCAddr, env.OperatorToken))

	worker := "w-nurse-20"
	if code, res := postWebhook(t, env.Hook, env.HRSecret, "hire-"+worker, hrEvent("hire", worker, "RN", "nora.nurse@clinic.example")); code != 202 {
		t.Fatalf("joiner: %d %v", code, res)
	}
	eventually(t, 60*time.Second, "the joiner's three accounts verified enabled", func() error {
		r, err := prov.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		n := verifiedEnabled(r.Accounts)
		if n != 3 {
			return fmt.Errorf("%d verified of %v", n, r.Accounts)
		}
		return nil
	})

	// Accounts that existed before tenure (found by reconciliation), created in each target
	// by its own administrator.
	scimUsers := []string{"nora.nurse"}
	ldapUsers := []string{"nora.nurse"}
	pgUsers := []string{"nora.nurse"}
	for i := 1; i <= 5; i++ {
		u := fmt.Sprintf("nora.nurse-%d", i)
		if code := scimSrv.Call(t, "POST", "Users", map[string]any{"schemas": []string{"urn:ietf:params:scim:schemas:core:2.0:User"},
			"userName": u, "active": true}, nil); code != 201 {
			t.Fatalf("SCIM POST %s: %d", u, code)
		}
		scimUsers = append(scimUsers, u)
		ldapSrv.Modify(t, fmt.Sprintf("dn: uid=%s,%s\nchangetype: add\nobjectClass: inetOrgPerson\nuid: %s\ncn: Nora Nurse %d\nsn: Nurse\n", u, slapdtest.PeopleDN, u, i))
		ldapUsers = append(ldapUsers, u)
	}
	admin, err := pgx.Connect(ctx, env.AdminURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for i := 1; i <= 6; i++ {
		u := fmt.Sprintf("nora.nurse-%d", i)
		if _, err := admin.Exec(ctx, "CREATE ROLE "+pgx.Identifier{prefix + u}.Sanitize()+" LOGIN"); err != nil {
			t.Fatal(err)
		}
		pgUsers = append(pgUsers, u)
	}
	link := func(conn, user string) {
		t.Helper()
		linkFound(t, prov, worker, conn, user)
	}
	for _, u := range scimUsers[1:] {
		link("saas", u)
	}
	for _, u := range ldapUsers[1:] {
		link("directory", u)
	}
	for _, u := range pgUsers[1:] {
		link("reporting", u)
	}
	// The legacy system's account, linked the way an operator does it: with tenurectl.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	out, err := exec.CommandContext(cctx, tenurectl, "accounts", "link", "legacy", "nnurse", "--worker", worker,
		"--reason", "CHG-4700: nnurse in the lab system is Nora's", "--addr", env.GRPCAddr, "--token", env.OperatorToken, "--plaintext",
		"--config", filepath.Join(env.Dir, "none.yaml")).CombinedOutput()
	cancel()
	if err != nil || !strings.Contains(string(out), "linked legacy/nnurse to "+worker) {
		t.Fatalf("tenurectl accounts link: %v\n%s", err, out)
	}

	// Every LDAP account gets a password, and can bind before the termination.
	for _, u := range ldapUsers {
		ldapSrv.Modify(t, fmt.Sprintf("dn: uid=%s,%s\nchangetype: modify\nreplace: userPassword\nuserPassword: pw-%s\n", u, slapdtest.PeopleDN, u))
		if err := ldapSrv.Bind("uid="+u+","+slapdtest.PeopleDN, "pw-"+u); err != nil {
			t.Fatalf("LDAP bind as %s before the termination: %v", u, err)
		}
	}
	// Every SCIM account is active.
	for _, u := range scimUsers {
		if a := scimSrv.User(t, u)["active"]; a != true {
			t.Fatalf("SCIM user %s active = %v before the termination", u, a)
		}
	}
	// A reporting session stays open as one of the roles; the disable must end it.
	sessionRole := prefix + pgUsers[3]
	session, err := pgx.Connect(ctx, roleURL(env.AdminURL, sessionRole))
	if err != nil {
		t.Fatalf("connect as %s before the termination: %v", sessionRole, err)
	}
	defer session.Close(ctx)
	var pid int
	if err := session.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}

	// Count the revocations as they are published.
	disabled := make(chan string, 64)
	sub, err := env.NATS.Subscribe("tenure.revocation.account_disabled."+worker, func(m *nats.Msg) { disabled <- m.Subject })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	if code, res := postWebhook(t, env.Hook, env.HRSecret, "term-"+worker, hrEvent("termination", worker, "", "")); code != 202 {
		t.Fatalf("termination: %d %v", code, res)
	}

	// The 19 automatic accounts are verified; the case waits for the person.
	var c *provisionerv1.LeaverCase
	eventually(t, 60*time.Second, "19 accounts verified, the manual one waiting", func() error {
		r, err := prov.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		c = r.LeaverCase
		verified, waiting := 0, 0
		for _, a := range c.Accounts {
			switch {
			case a.Status == "verified" && a.Connector != "legacy":
				verified++
			case a.Status == "waiting" && a.Connector == "legacy":
				waiting++
			}
		}
		if len(c.Accounts) != 20 || verified != 19 || waiting != 1 {
			return fmt.Errorf("%d accounts, %d verified, %d waiting: %v", len(c.Accounts), verified, waiting, c.Accounts)
		}
		return nil
	})
	if c.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN {
		t.Fatalf("case is %v before the operator attested the manual account", c.Status)
	}
	perConn := map[string]int{}
	for _, a := range c.Accounts {
		perConn[a.Connector]++
	}
	if perConn["saas"] != 6 || perConn["directory"] != 6 || perConn["reporting"] != 7 || perConn["legacy"] != 1 {
		t.Fatalf("case accounts per target: %v", perConn)
	}

	// The operator finds the task and attests it with tenurectl.
	tasks, err := prov.ListTasks(ctx, &provisionerv1.ListTasksRequest{WorkerId: worker})
	if err != nil || len(tasks.Tasks) != 1 || tasks.Tasks[0].Operation != "disable" || tasks.Tasks[0].CaseId != c.CaseId {
		t.Fatalf("open tasks = %v, %v", tasks, err)
	}
	out, err = exec.Command(tenurectl, "task", "complete", tasks.Tasks[0].TaskId, "--evidence", "locked nnurse in the pharmacy admin console, ticket CHG-4711",
		"--addr", env.GRPCAddr, "--token", env.OperatorToken, "--plaintext", "--config", filepath.Join(env.Dir, "none.yaml")).CombinedOutput()
	if err != nil {
		t.Fatalf("tenurectl task complete: %v\n%s", err, out)
	}
	eventually(t, 30*time.Second, "case completed", func() error {
		r, err := prov.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		c = r.LeaverCase
		if c.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
			return fmt.Errorf("case %v", c)
		}
		return nil
	})
	for _, a := range c.Accounts {
		if a.Status != "verified" || a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_DISABLED || a.VerifiedAt == nil {
			t.Errorf("case account %v", a)
		}
	}
	eventually(t, 10*time.Second, "20 account_disabled revocations", func() error {
		if n := len(disabled); n != 20 {
			return fmt.Errorf("%d so far", n)
		}
		return nil
	})

	// Now each target, directly.
	// LDAP: every entry carries ppolicy's lock, and binding fails.
	entries := ldapSrv.Search(t, slapdtest.PeopleDN, "(uid=nora.nurse*)", "uid", "pwdAccountLockedTime")
	if len(entries) != 6 {
		t.Fatalf("LDAP search found %d entries, want 6: %v", len(entries), entries)
	}
	for dn, attrs := range entries {
		if got := attrs["pwdAccountLockedTime"]; len(got) != 1 || got[0] != "000001010000Z" {
			t.Errorf("LDAP %s pwdAccountLockedTime = %v, want 000001010000Z", dn, got)
		}
	}
	for _, u := range ldapUsers {
		err := ldapSrv.Bind("uid="+u+","+slapdtest.PeopleDN, "pw-"+u)
		if err == nil || !strings.Contains(err.Error(), "Invalid credentials (49)") {
			t.Errorf("LDAP bind as %s after the termination: %v, want Invalid credentials (49)", u, err)
		}
	}
	// SCIM: every user reads back active=false.
	for _, u := range scimUsers {
		if a := scimSrv.User(t, u)["active"]; a != false {
			t.Errorf("SCIM user %s active = %v after the termination, want false", u, a)
		}
	}
	// PostgreSQL: every role is NOLOGIN, the open session was ended, a new one is refused.
	rows, err := admin.Query(ctx, "SELECT rolname::text, rolcanlogin FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY rolname", prefix)
	if err != nil {
		t.Fatal(err)
	}
	type roleRow struct {
		Name     string
		CanLogin bool
	}
	roles, err := pgx.CollectRows(rows, pgx.RowToStructByPos[roleRow])
	if err != nil {
		t.Fatal(err)
	}
	if len(roles) != 7 {
		t.Fatalf("pg_roles has %d roles with prefix %s, want 7: %v", len(roles), prefix, roles)
	}
	for _, r := range roles {
		if r.CanLogin {
			t.Errorf("pg_roles: %s rolcanlogin = true after the termination", r.Name)
		}
	}
	var alive bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", pid).Scan(&alive); err != nil || alive {
		t.Errorf("backend %d of %s still in pg_stat_activity (%v)", pid, sessionRole, err)
	}
	if err := session.Ping(ctx); err == nil {
		t.Errorf("the open session of %s still works after the termination", sessionRole)
	}
	if conn, err := pgx.Connect(ctx, roleURL(env.AdminURL, sessionRole)); err == nil {
		conn.Close(ctx)
		t.Errorf("%s can still log in after the termination", sessionRole)
	}
	// The manual account: the attestation is on record with who and what.
	done, err := prov.ListTasks(ctx, &provisionerv1.ListTasksRequest{WorkerId: worker, Status: "completed"})
	if err != nil || len(done.Tasks) != 1 || done.Tasks[0].Attestation == nil || done.Tasks[0].Attestation.CompletedBy != "olga" ||
		!strings.Contains(done.Tasks[0].Attestation.Evidence, "CHG-4711") {
		t.Errorf("completed tasks = %v, %v", done, err)
	}
}

// roleURL is a URL of the cluster's "postgres" database as role (the test cluster trusts
// local logins; tenure's own database is closed to everyone but its service roles).
func roleURL(adminURL, role string) string {
	u, err := url.Parse(adminURL)
	if err != nil {
		return adminURL
	}
	u.User, u.Path = url.User(role), "/postgres"
	return u.String()
}

// A target that answers 503 and 429 (with Retry-After) for a while still ends with every
// account disabled; the retries are visible on the case (attempts, last error), as
// tenure.result.<connector>.failed events, and the target was left alone for the time it
// asked for. The target is a real HTTP server in this process behind the webhook connector.
func TestLeaverFlakyTargetRetries(t *testing.T) {
	ctx := context.Background()
	store := newAccountStore(t)
	env := startStack(t, stackOptions{
		Policy: "systems:\n  - {name: rostering, holds_ephi: false, connector: flaky}\npackages: []\nroles: []\n",
		Connectors: fmt.Sprintf(`connectors:
  - name: flaky
    type: webhook
    config: {url: %q, secret: %q}
    policy: {backoff_initial: 200ms, backoff_max: 2s, max_attempts: 12, concurrency: 2}
`, store.URL, store.Secret),
	})
	prov := provisionerv1.NewProvisioningServiceClient(dial(t, env.GRPCAddr, env.OperatorToken))
	worker := "w-flaky-1"
	users := []string{"flo.flaky", "flo.flaky-2"}
	store.Seed(users...)
	// The worker, hired (the policy gives the role nothing), and their accounts found in the
	// target and linked by an operator.
	if code, res := postWebhook(t, env.Hook, env.HRSecret, "hire-"+worker, hrEvent("hire", worker, "RN", "flo@clinic.example")); code != 202 {
		t.Fatalf("hire: %d %v", code, res)
	}
	for _, u := range users {
		linkFound(t, prov, worker, "flaky", u)
	}
	failed := make(chan *nats.Msg, 64)
	sub, err := env.NATS.ChanSubscribe("tenure.result.flaky.failed", failed)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	// The next six calls fail: 503 Retry-After 1, 429 Retry-After 1, 503 without, by turns.
	var n int
	answers := []injected{{503, "1"}, {429, "1"}, {503, ""}, {429, "1"}, {503, "1"}, {429, ""}}
	store.setFail(func(op, user string) (int, string) {
		if n < len(answers) {
			a := answers[n]
			n++
			return a.code, a.ra
		}
		return 0, ""
	})
	store.Record(true)
	start := time.Now()
	if code, res := postWebhook(t, env.Hook, env.HRSecret, "term-"+worker, hrEvent("termination", worker, "", "")); code != 202 {
		t.Fatalf("termination: %d %v", code, res)
	}
	var c *provisionerv1.LeaverCase
	eventually(t, 60*time.Second, "case completed", func() error {
		r, err := prov.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		c = r.LeaverCase
		if c.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
			return fmt.Errorf("case %v", c)
		}
		return nil
	})
	t.Logf("case completed after %v", time.Since(start).Round(time.Millisecond))
	for _, u := range users {
		if st := store.State(u); st != "disabled" {
			t.Errorf("target: %s is %q, want disabled", u, st)
		}
	}
	// The retries are on the case.
	attempts, errs := 0, ""
	for _, a := range c.Accounts {
		if a.Status != "verified" || a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_DISABLED {
			t.Errorf("case account %v", a)
		}
		attempts += int(a.Attempts)
		errs += a.LastError + "\n"
		t.Logf("case account %s: attempts %d, last error %q", a.Username, a.Attempts, a.LastError)
	}
	if attempts < len(users)+2 {
		t.Errorf("case accounts show %d attempts in all, want retries beyond the %d successful ones", attempts, len(users))
	}
	// Verified, an account shows no last error: the 503s and 429s are history, kept in its
	// attempts and in the failed results below.
	if strings.TrimSpace(errs) != "" {
		t.Errorf("verified case accounts still show a last error:\n%s", errs)
	}
	// Each failed attempt was published as a result.
	var failures []string
	eventually(t, 10*time.Second, "failed results", func() error {
		for {
			select {
			case m := <-failed:
				failures = append(failures, string(m.Data))
				continue
			default:
			}
			break
		}
		if len(failures) < 2 {
			return fmt.Errorf("%d tenure.result.flaky.failed events", len(failures))
		}
		return nil
	})
	joined := strings.Join(failures, "\n")
	if !strings.Contains(joined, "HTTP 503") || !strings.Contains(joined, "HTTP 429") {
		t.Errorf("failed results lack a 503 or a 429:\n%q", joined)
	}
	// The target answered every injected error, and after each Retry-After it was left
	// alone for the second it asked for. Two operations run at once (concurrency 2), so a
	// call already on its way when the error was answered may still arrive just after it;
	// any call arriving later than that and sooner than a second is one tenure sent during
	// the pause.
	calls := store.Calls()
	errCount := 0
	const inFlight = 100 * time.Millisecond
	for i, cl := range calls {
		if cl.Status != 429 && cl.Status != 503 {
			continue // 2xx, or 501 for an operation the store does not implement
		}
		errCount++
		if answers[min(errCount, len(answers))-1].ra == "" {
			continue
		}
		for _, next := range calls[i+1:] {
			if gap := next.At.Sub(cl.At); gap > inFlight && gap < 950*time.Millisecond {
				t.Errorf("a %s call came %v after a %d with Retry-After: 1\n%v", next.Op, gap, cl.Status, calls)
			}
		}
	}
	if errCount != len(answers) {
		t.Errorf("target answered %d errors, want %d: %v", errCount, len(answers), calls)
	}
}

// injected is an error answer the flaky target gives.
type injected struct {
	code int
	ra   string // Retry-After, seconds
}
