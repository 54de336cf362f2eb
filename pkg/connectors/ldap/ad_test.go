package ldap

// There is no Active Directory server here, so the AD semantics are tested as values: how
// userAccountControl is read and changed, how objectGUIDs become IDs and filters, and what a
// new AD user looks like. The OpenLDAP path of the same code runs against a real slapd in
// ldap_test.go.

import (
	"context"
	"slices"
	"testing"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/tenure-dev/tenure/pkg/connector"
)

func TestUserAccountControl(t *testing.T) {
	tests := []struct {
		name         string
		in           string
		wantDisabled bool
		wantOK       bool
	}{
		{"normal", "512", false, true},
		{"disabled", "514", true, true},
		{"normal, password never expires", "66048", false, true},
		{"disabled, password never expires", "66050", true, true},
		{"smartcard required, disabled", "262658", true, true},
		{"negative (top bit set), disabled", "-2147483134", true, true},
		{"empty", "", false, false},
		{"garbage", "enabled", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			disabled, ok := uacState(tt.in)
			if disabled != tt.wantDisabled || ok != tt.wantOK {
				t.Errorf("uacState(%q) = %v, %v; want %v, %v", tt.in, disabled, ok, tt.wantDisabled, tt.wantOK)
			}
		})
	}
	// Disabling sets only bit 0x2 and enabling clears only it: the other flags are the
	// directory's, not tenure's.
	for _, tt := range []struct {
		in        uint32
		disable   bool
		want      uint32
		wantWrite string
	}{
		{512, true, 514, "514"},
		{514, true, 514, "514"},
		{514, false, 512, "512"},
		{512, false, 512, "512"},
		{66048, true, 66050, "66050"},
		{66050, false, 66048, "66048"},
		{0x80000200, true, 0x80000202, "2147484162"},
	} {
		got := withDisabled(tt.in, tt.disable)
		if got != tt.want || formatUAC(got) != tt.wantWrite {
			t.Errorf("withDisabled(%d, %v) = %d (%s), want %d (%s)", tt.in, tt.disable, got, formatUAC(got), tt.want, tt.wantWrite)
		}
	}
	if n, err := parseUAC("-2147483134"); err != nil || n != 0x80000202 {
		t.Errorf("parseUAC(negative) = %#x, %v", n, err)
	}
}

func TestObjectGUID(t *testing.T) {
	// The byte order AD uses on the wire for the GUID shown as below.
	raw := []byte{0x38, 0x9c, 0x6e, 0xba, 0x5c, 0x8e, 0xcd, 0x4d, 0xa4, 0x5e, 0x1d, 0x6e, 0x4c, 0x2d, 0x3a, 0x8f}
	const want = "ba6e9c38-8e5c-4dcd-a45e-1d6e4c2d3a8f"
	s, err := guidString(raw)
	if err != nil || s != want {
		t.Fatalf("guidString = %q, %v; want %q", s, err, want)
	}
	back, err := guidBytes(want)
	if err != nil || !slices.Equal(back, raw) {
		t.Fatalf("guidBytes = %x, %v", back, err)
	}
	if b, err := guidBytes("{" + want + "}"); err != nil || !slices.Equal(b, raw) {
		t.Errorf("braced GUID: %x, %v", b, err)
	}
	for _, bad := range []string{"", "nope", "ba6e9c38-8e5c-4dcd-a45e-1d6e4c2d3a", "ba6e9c388e5c4dcda45e1d6e4c2d3a8f00"} {
		if _, err := guidBytes(bad); err == nil {
			t.Errorf("guidBytes(%q) accepted", bad)
		}
	}
	if _, err := guidString(raw[:15]); err == nil {
		t.Error("guidString accepted 15 bytes")
	}
	c := newAD(t)
	f, err := c.idFilter(want)
	if err != nil || f != `(objectGUID=\38\9c\6e\ba\5c\8e\cd\4d\a4\5e\1d\6e\4c\2d\3a\8f)` {
		t.Errorf("idFilter = %s, %v", f, err)
	}
	if _, err := goldap.CompileFilter(f); err != nil {
		t.Errorf("filter does not compile: %v", err)
	}
	if _, err := c.idFilter("not-a-guid"); connector.KindOf(err) != connector.KindPermanent {
		t.Errorf("bad GUID: %v", err)
	}
}

func newAD(t *testing.T) *Connector {
	t.Helper()
	c, err := New(Config{
		URL: "ldaps://dc1.corp.example", BindDN: "CN=tenure,OU=Service,DC=corp,DC=example",
		BindPassword: connector.SecretValue("pw"), BaseDN: "OU=Staff,DC=corp,DC=example",
		GroupBaseDN: "OU=Groups,DC=corp,DC=example", Groups: []string{"EHR Readers"},
		Mode: ModeActiveDirectory,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestActiveDirectoryDefaultsAndNewUser(t *testing.T) {
	c := newAD(t)
	if c.cfg.UsernameAttribute != "sAMAccountName" || c.idAttr != "objectGUID" ||
		c.cfg.UserFilter != "(&(objectCategory=person)(objectClass=user))" ||
		!slices.Equal(c.cfg.ObjectClasses, []string{"top", "person", "organizationalPerson", "user"}) {
		t.Errorf("AD defaults: %+v", c.cfg)
	}
	if got := c.userAttrs(); !slices.Contains(got, "userAccountControl") || slices.Contains(got, "pwdAccountLockedTime") {
		t.Errorf("AD reads %v", got)
	}
	dn, attrs := c.newUser(connector.AccountSpec{WorkerID: "W-7", Username: "jdoe", GivenName: "Jane", FamilyName: "Doe", Email: "jdoe@corp.example"})
	if dn != "CN=jdoe,OU=Staff,DC=corp,DC=example" {
		t.Errorf("dn = %s", dn)
	}
	got := map[string][]string{}
	for _, a := range attrs {
		got[a.Type] = a.Vals
	}
	want := map[string][]string{
		"objectClass":        {"top", "person", "organizationalPerson", "user"},
		"sAMAccountName":     {"jdoe"},
		"cn":                 {"jdoe"},
		"sn":                 {"Doe"},
		"givenName":          {"Jane"},
		"displayName":        {"Jane Doe"},
		"mail":               {"jdoe@corp.example"},
		"employeeID":         {"W-7"},
		"userAccountControl": {"514"}, // created disabled: no password is set
	}
	for k, v := range want {
		if !slices.Equal(got[k], v) {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected attribute %s = %v", k, got[k])
		}
	}
	// State comes from userAccountControl alone.
	for uac, want := range map[string]connector.AccountState{"512": connector.StateEnabled, "514": connector.StateDisabled, "": connector.StateUnknown} {
		e := goldap.NewEntry("CN=x", map[string][]string{"userAccountControl": {uac}})
		if uac == "" {
			e = goldap.NewEntry("CN=x", nil)
		}
		if got := c.state(e); got != want {
			t.Errorf("state(uac %q) = %v, want %v", uac, got, want)
		}
	}
	if f := c.configuredGroupsFilter(); f != `(&(objectClass=group)(|(cn=EHR Readers)))` {
		t.Errorf("groups filter = %s", f)
	}
}

func TestOpenLDAPState(t *testing.T) {
	c, err := New(Config{URL: "ldap://127.0.0.1", BindDN: "cn=a", BindPassword: connector.SecretValue("pw"), BaseDN: "dc=x"})
	if err != nil {
		t.Fatal(err)
	}
	for v, want := range map[string]connector.AccountState{
		"":                connector.StateEnabled,
		"000001010000Z":   connector.StateDisabled,
		"20261123101500Z": connector.StateEnabled, // a failed-bind lockout expires by itself
	} {
		attrs := map[string][]string{}
		if v != "" {
			attrs["pwdAccountLockedTime"] = []string{v}
		}
		if got := c.state(goldap.NewEntry("uid=x", attrs)); got != want {
			t.Errorf("state(%q) = %v, want %v", v, got, want)
		}
	}
	if _, err := c.GetAccount(context.Background(), connector.AccountRef{ID: "x"}); connector.KindOf(err) != connector.KindPermanent {
		t.Errorf("bad entryUUID: %v", err)
	}
}

func TestPageToken(t *testing.T) {
	tok := encodeToken(7, []byte{0, 1, 0xff, ':'})
	gen, cookie, err := decodeToken(tok)
	if err != nil || gen != 7 || !slices.Equal(cookie, []byte{0, 1, 0xff, ':'}) {
		t.Errorf("round trip: %d %x %v", gen, cookie, err)
	}
}

// unicodePwd takes the password in double quotes, UTF-16LE; each scrambled one is new.
func TestScrambledPassword(t *testing.T) {
	if got := encodeUnicodePwd("Ab1"); got != "\"\x00A\x00b\x001\x00\"\x00" {
		t.Fatalf("encodeUnicodePwd = %q", got)
	}
	a, err := scrambledPassword()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := scrambledPassword()
	if a == b || len(a) < 2*(2+43) || a[0] != '"' || a[len(a)-2] != '"' {
		t.Fatalf("scrambledPassword = %q, %q", a, b)
	}
}
