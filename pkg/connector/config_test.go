package connector

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseConfigs(t *testing.T) {
	registerFake(t, "test-file")
	data := `# demo
connectors:
  - name: ehr-db
    type: test-file
    system: ehr
    config:
      role_prefix: ehr_
      groups: [ehr_read]
  - name: billing_db
    type: test-file
    config:
      role_prefix: bill_
`
	cfgs, err := ParseConfigs([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfgs) != 2 {
		t.Fatalf("got %d configs", len(cfgs))
	}
	if c := cfgs[0]; c.Name != "ehr-db" || c.Type != "test-file" || c.System != "ehr" || c.line != 3 {
		t.Errorf("first = %+v", c)
	}
	if c := cfgs[1]; c.System != "billing_db" {
		t.Errorf("System did not default to Name: %q", c.System)
	}
	conn, err := cfgs[0].Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got := conn.(*fakeConnector).cfg; got.Prefix != "ehr_" || got.Groups[0] != "ehr_read" {
		t.Errorf("opened with %+v", got)
	}
}

func TestParseConfigsEmpty(t *testing.T) {
	for _, doc := range []string{"", "# nothing\n", "connectors: []\n"} {
		cfgs, err := ParseConfigs([]byte(doc))
		if err != nil || len(cfgs) != 0 {
			t.Errorf("%q: %v, %v", doc, cfgs, err)
		}
	}
}

func TestParseConfigsInvalid(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"unknown top-level key", "connector: []\n", []string{`line 1: unknown field "connector"`}},
		{"unknown entry key", "connectors:\n  - name: a\n    type: t\n    typo: 1\n", []string{`line 4: unknown field "typo"`}},
		{"missing name", "connectors:\n  - type: t\n", []string{"line 2: connector 1: name is required"}},
		{"bad name", "connectors:\n  - name: EHR.db\n    type: t\n", []string{`line 2: connector name "EHR.db" must be`, "NATS subject token"}},
		{"duplicate", "connectors:\n  - {name: a, type: t}\n  - {name: b, type: t}\n  - {name: a, type: t}\n",
			[]string{`line 4: duplicate connector name "a" (first at line 2)`}},
		{"missing type", "connectors:\n  - name: a\n", []string{`line 2: connector "a": type is required`}},
		{"config not a mapping", "connectors:\n  - {name: a, type: t, config: [1]}\n", []string{"config must be a mapping"}},
		{"every problem", "connectors:\n  - name: A\n    type: t\n  - name: b\n", []string{"line 2:", "line 4:"}},
		{"syntax", "connectors: [\n", []string{"yaml:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfigs([]byte(tt.doc))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadConfigsErrorsNameFileLineField(t *testing.T) {
	registerFake(t, "test-load")
	path := filepath.Join(t.TempDir(), "connectors.yaml")
	doc := `connectors:
  - name: ehr
    type: test-load
    config:
      role_prefix: ehr_
      nested:
        a: 1
        passwrd: x
  - name: other
    type: test-nope
`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgs, err := LoadConfigs(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = cfgs[0].Open(t.Context())
	want := path + `:2: connector "ehr": connector type "test-load": config: line 8: unknown field "passwrd"`
	if err == nil || err.Error() != want {
		t.Errorf("error = %v\nwant    %s", err, want)
	}
	_, err = cfgs[1].Open(t.Context())
	if err == nil || !strings.HasPrefix(err.Error(), path+`:9: connector "other": unknown connector type "test-nope" (known: `) {
		t.Errorf("error = %v", err)
	}

	if err := os.WriteFile(path, []byte("connectors:\n  - name: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfigs(path); err == nil || !strings.HasPrefix(err.Error(), path+":2: ") {
		t.Errorf("error = %v, want it to start with %s:2:", err, path)
	}
	if _, err := LoadConfigs(path + ".missing"); err == nil {
		t.Error("no error for a missing file")
	}
}
