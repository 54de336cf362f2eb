package connector

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

// fakeConfig exercises the yaml.v3 field rules the strict decoder must follow.
type fakeConfig struct {
	URL        Secret                `yaml:"url"`
	Prefix     string                `yaml:"role_prefix"`
	Groups     []string              `yaml:"groups"`
	Nested     fakeNested            `yaml:"nested"`
	Ptr        *fakeNested           `yaml:"ptr"`
	Items      []fakeNested          `yaml:"items"`
	ByName     map[string]fakeNested `yaml:"by_name"`
	Extra      map[string]any        `yaml:"extra"`
	Ignored    string                `yaml:"-"`
	Untagged   int
	fakeInline `yaml:",inline"`
}

type fakeNested struct {
	A int    `yaml:"a"`
	B string `yaml:"b"`
}

type fakeInline struct {
	Timeout string `yaml:"timeout"`
}

type fakeConnector struct{ cfg fakeConfig }

func (*fakeConnector) GetAccount(context.Context, AccountRef) (Account, error) {
	return Account{}, ErrNotFound
}

// registerFake registers a connector type for one test.
func registerFake(t *testing.T, name string) {
	t.Helper()
	Register(name, func(ctx context.Context, decode func(any) error) (Connector, error) {
		var cfg fakeConfig
		if err := decode(&cfg); err != nil {
			return nil, err
		}
		if cfg.Prefix == "" {
			return nil, errors.New("role_prefix is required")
		}
		return &fakeConnector{cfg: cfg}, nil
	})
	t.Cleanup(func() { unregister(name) })
}

func TestRegisterPanics(t *testing.T) {
	registerFake(t, "test-dup")
	f := func(context.Context, func(any) error) (Connector, error) { return &fakeConnector{}, nil }
	for name, call := range map[string]func(){
		"empty":     func() { Register("", f) },
		"space":     func() { Register(" x", f) },
		"nil":       func() { Register("test-nil", nil) },
		"duplicate": func() { Register("test-dup", f) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("Register did not panic")
				}
			}()
			call()
		})
	}
	if slices.Contains(Types(), "test-nil") {
		t.Error("a nil factory was registered")
	}
}

func TestOpenUnknownType(t *testing.T) {
	registerFake(t, "test-b")
	registerFake(t, "test-a")
	_, err := Open(t.Context(), "test-x", nil)
	if !errors.Is(err, ErrUnknownType) {
		t.Fatalf("error %v does not match ErrUnknownType", err)
	}
	known := strings.Join(Types(), ", ")
	if want := `unknown connector type "test-x" (known: ` + known + `)`; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	if !strings.Contains(known, "test-a, test-b") {
		t.Errorf("Types() = %q, want sorted and including test-a, test-b", known)
	}
}

func TestOpenDecodes(t *testing.T) {
	registerFake(t, "test-open")
	t.Setenv("TEST_OPEN_URL", "postgres://x")
	tests := []struct {
		name   string
		config string
		check  func(t *testing.T, c fakeConfig)
	}{
		{"yaml", `
url: {env: TEST_OPEN_URL}
role_prefix: ehr_
groups: [a, b]
nested: {a: 1, b: two}
ptr: {a: 2}
items: [{a: 3}, {b: four}]
by_name: {x: {a: 5}}
extra: {anything: [1, 2], goes: {here: true}}
untagged: 7
timeout: 5s
`, func(t *testing.T, c fakeConfig) {
			if u, _ := c.URL.Resolve(); u != "postgres://x" || c.Prefix != "ehr_" || c.Nested.B != "two" ||
				c.Ptr.A != 2 || c.Items[1].B != "four" || c.ByName["x"].A != 5 || c.Untagged != 7 || c.Timeout != "5s" {
				t.Errorf("decoded %+v", c)
			}
		}},
		{"json", `{"url": "postgres://y", "role_prefix": "p_", "nested": {"a": 9}}`, func(t *testing.T, c fakeConfig) {
			if u, _ := c.URL.Resolve(); u != "postgres://y" || c.Prefix != "p_" || c.Nested.A != 9 {
				t.Errorf("decoded %+v", c)
			}
		}},
		{"merge keys", "base: &b {a: 1}\nrole_prefix: p_\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Open(t.Context(), "test-open", []byte(tt.config))
			if tt.name == "merge keys" {
				// "base" is not a field: strictness applies to anchors' hosts too.
				if err == nil || !strings.Contains(err.Error(), `unknown field "base"`) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c.(*fakeConnector).cfg)
		})
	}
}

func TestOpenStrict(t *testing.T) {
	registerFake(t, "test-strict")
	tests := []struct {
		name   string
		config string
		want   []string
	}{
		{"top level", "role_prefix: p\npasswrd: x\n", []string{`config: line 2: unknown field "passwrd"`}},
		{"nested", "role_prefix: p\nnested:\n  a: 1\n  c: 2\n", []string{`line 4: unknown field "c"`}},
		{"pointer", "role_prefix: p\nptr: {z: 1}\n", []string{`line 2: unknown field "z"`}},
		{"in a list", "role_prefix: p\nitems:\n  - a: 1\n  - bb: 2\n", []string{`line 4: unknown field "bb"`}},
		{"in a map value", "role_prefix: p\nby_name:\n  x: {q: 1}\n", []string{`line 3: unknown field "q"`}},
		{"ignored field", "role_prefix: p\nignored: x\n", []string{`unknown field "ignored"`}},
		{"merged", "role_prefix: p\nnested:\n  <<: {a: 1, zz: 2}\n", []string{`line 3: unknown field "zz"`}},
		{"secret", "role_prefix: p\nurl: {envv: X}\n", []string{`line 2: unknown field "envv" in secret`}},
		{"type error", "role_prefix: p\nnested: {a: notanint}\n", []string{"line 2:", "notanint"}},
		{"all problems, in line order", "x: 1\nrole_prefix: p\nnested: {a: nope}\ny: 2\n", []string{
			`config: line 1: unknown field "x"; line 3: `, `; line 4: unknown field "y"`}},
		{"not a mapping", "[1, 2]", []string{"cannot unmarshal"}},
		{"syntax", "a: [", []string{`connector type "test-strict": config: yaml:`}},
		{"factory error", "", []string{`connector type "test-strict": role_prefix is required`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(t.Context(), "test-strict", []byte(tt.config))
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

func TestCapabilities(t *testing.T) {
	if got := Capabilities(&fakeConnector{}); !slices.Equal(got, []string{"get"}) {
		t.Errorf("Capabilities(read-only) = %v", got)
	}
	if got := Capabilities(fullConnector{}); !slices.Equal(got, []string{"get", CapCreate, CapDisable, CapEnable, CapDelete, CapEntitlements, CapSessions, CapList, CapCredentials}) {
		t.Errorf("Capabilities(full) = %v", got)
	}
	if err := Close(&fakeConnector{}); err != nil {
		t.Errorf("Close of a connector without Close: %v", err)
	}
	if err := Close(fullConnector{}); !errors.Is(err, errClosed) {
		t.Errorf("Close did not call Close: %v", err)
	}
}

var errClosed = errors.New("closed")

type fullConnector struct{ *fakeConnector }

func (fullConnector) CreateAccount(context.Context, AccountSpec) (Account, error) {
	return Account{}, nil
}
func (fullConnector) DisableAccount(context.Context, AccountRef) error            { return nil }
func (fullConnector) EnableAccount(context.Context, AccountRef) error             { return nil }
func (fullConnector) DeleteAccount(context.Context, AccountRef) error             { return nil }
func (fullConnector) GrantEntitlement(context.Context, AccountRef, string) error  { return nil }
func (fullConnector) RevokeEntitlement(context.Context, AccountRef, string) error { return nil }
func (fullConnector) RevokeSessions(context.Context, AccountRef) error            { return nil }
func (fullConnector) RevokeCredentials(context.Context, AccountRef) error         { return nil }
func (fullConnector) ListAccounts(context.Context, string) ([]Account, string, error) {
	return nil, "", nil
}
func (fullConnector) Close() error { return errClosed }
