package ldap_test

import (
	"testing"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/tenure-dev/tenure/pkg/connectors/ldap/slapdtest"
)

const (
	suffix   = slapdtest.Suffix
	adminDN  = slapdtest.AdminDN
	adminPW  = slapdtest.AdminPW
	peopleDN = slapdtest.PeopleDN
	groupsDN = slapdtest.GroupsDN
)

// The groups need a member from the start (groupOfNames requires one), so each has the
// admin as a placeholder. "readers" is a groupOfNames, "writers" a groupOfUniqueNames, so
// both member attributes are exercised.
const groups = `dn: cn=readers,` + groupsDN + `
objectClass: groupOfNames
cn: readers
member: ` + adminDN + `

dn: cn=writers,` + groupsDN + `
objectClass: groupOfUniqueNames
cn: writers
uniqueMember: ` + adminDN + `
`

// slapd is a private OpenLDAP server for one test (slapdtest), with the readers and writers
// groups.
type slapd struct{ *slapdtest.Server }

// startSlapd starts slapd on a free loopback port and stops it when t ends.
func startSlapd(t *testing.T) *slapd {
	t.Helper()
	return &slapd{slapdtest.Start(t, slapdtest.Options{LDIF: groups})}
}

// startSlapdTLS also gives slapd a certificate and an ldaps:// listener.
func startSlapdTLS(t *testing.T) *slapd {
	t.Helper()
	return &slapd{slapdtest.Start(t, slapdtest.Options{TLS: true, LDIF: groups})}
}

// admin returns a connection bound as the rootdn, for checking the directory directly.
func (s *slapd) admin(t *testing.T) *goldap.Conn {
	t.Helper()
	conn, err := goldap.DialURL(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Bind(adminDN, adminPW); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// bind tries a simple bind as dn with password on a fresh connection.
func (s *slapd) bind(dn, password string) error { return s.Bind(dn, password) }
