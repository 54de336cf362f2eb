package natsx_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tenure-dev/tenure/pkg/natsx"
)

// The permissions tenure generates for the embedded server are those of deploy/nats for the
// same connectors: user by user, subject by subject.
func TestUserPermissionsMatchDeployAccounts(t *testing.T) {
	permSetPasswords(t)
	opts := permLoad(t, permDeployFile(t, "nats.conf"))
	demo := []string{"demo-wiki", "demo-chat", "demo-intranet", "demo-ticketing", "demo-ehr"}
	want := natsx.UserPermissions(demo)
	seen := 0
	for _, u := range opts.Users {
		p, ok := want[u.Username]
		if !ok {
			t.Errorf("deploy/nats has user %q that tenure does not generate", u.Username)
			continue
		}
		seen++
		if u.Permissions == nil || u.Permissions.Publish == nil || u.Permissions.Subscribe == nil {
			t.Fatalf("deploy/nats user %q has no publish/subscribe permissions", u.Username)
		}
		sameSet(t, u.Username+" publish", u.Permissions.Publish.Allow, p.Publish)
		sameSet(t, u.Username+" subscribe", u.Permissions.Subscribe.Allow, p.Subscribe)
		if len(u.Permissions.Publish.Deny) > 0 || len(u.Permissions.Subscribe.Deny) > 0 {
			t.Errorf("deploy/nats user %q has deny lists, which tenure does not generate", u.Username)
		}
	}
	if seen != len(natsx.ServiceUsers) {
		t.Fatalf("deploy/nats has %d of the %d users", seen, len(natsx.ServiceUsers))
	}
}

func sameSet(t *testing.T, what string, deploy, generated []string) {
	t.Helper()
	d, g := slices.Sorted(slices.Values(deploy)), slices.Sorted(slices.Values(generated))
	d, g = slices.Compact(d), slices.Compact(g)
	for _, s := range d {
		if !slices.Contains(g, s) {
			t.Errorf("%s: deploy/nats allows %q, the generated config does not", what, s)
		}
	}
	for _, s := range g {
		if !slices.Contains(d, s) {
			t.Errorf("%s: the generated config allows %q, deploy/nats does not", what, s)
		}
	}
}

// An embedded server started from AccountsConfig refuses anonymous clients and wrong
// passwords, and lets each user in with its own.
func TestEmbeddedWithAccountsRequiresAuth(t *testing.T) {
	dir := t.TempDir()
	pw := map[string]string{}
	for _, u := range natsx.ServiceUsers {
		pw[u] = "pw-" + u
	}
	conf, err := natsx.AccountsConfig([]string{"demo-wiki"}, pw)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "accounts.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ns, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: filepath.Join(dir, "js"), ConfigFile: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if nc, err := nats.Connect(ns.ClientURL(), nats.Timeout(5*time.Second)); err == nil {
		nc.Close()
		t.Fatal("an anonymous client was let in")
	}
	if nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("intake", "wrong")); err == nil {
		nc.Close()
		t.Fatal("a wrong password was let in")
	}
	for _, u := range natsx.ServiceUsers {
		nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(u, pw[u]), nats.CustomInboxPrefix("_INBOX_"+u))
		if err != nil {
			t.Fatalf("%s with its password: %v", u, err)
		}
		nc.Close()
	}
}
