package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `policy check --connectors` takes a comma list (tenure dev's generated file and the
// user's): the policy fits only with both, and a name in both is refused with both places.
func TestPolicyCheckTakesSeveralConnectorsFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	policy := write("policy.yaml", `systems:
  - {name: wiki, purpose: staff handbook, holds_ephi: false, connector: demo-wiki, owner: it-owner}
  - {name: okta, purpose: single sign-on, holds_ephi: false, connector: okta, owner: it-owner}
packages:
  - {name: wiki-reader, system: wiki, entitlements: [readers], auto_approve: true}
  - {name: okta-user, system: okta, entitlements: [], auto_approve: true}
roles:
  - {job_code: CLERK, packages: [wiki-reader, okta-user]}
`)
	gen := write("generated.yaml", "connectors:\n  - name: demo-wiki\n    type: manual\n")
	mine := write("mine.yaml", "connectors:\n  - name: okta\n    type: manual\n")
	clash := write("clash.yaml", "connectors:\n  - name: demo-wiki\n    type: manual\n")
	check := func(conns string) (string, error) {
		var out, errOut bytes.Buffer
		err := run(context.Background(), []string{"policy", "check", policy, "--connectors", conns}, &out, &errOut)
		return out.String() + errOut.String(), err
	}
	if out, err := check(gen + "," + mine); err != nil || !strings.Contains(out, "fits the 2 connectors") {
		t.Fatalf("both files: %v\n%s", err, out)
	}
	if out, err := check(gen); err == nil || !strings.Contains(err.Error()+out, `"okta"`) {
		t.Fatalf("without the user's file: %v\n%s", err, out)
	}
	if _, err := check(gen + "," + clash); err == nil || !strings.Contains(err.Error(), "clash.yaml:2: connector \"demo-wiki\" is already defined at "+gen+":2") {
		t.Fatalf("a name in both files: %v", err)
	}
}
