// Package ldap is the "ldap" connector: accounts in an LDAP directory, OpenLDAP or Active
// Directory (mode: active_directory).
//
// An account is a user entry under base_dn, found by its username attribute; an entitlement
// is membership in one of the configured groups under group_base_dn (groupOfNames and
// groupOfUniqueNames in OpenLDAP, group in AD; the member attribute is chosen from the
// group's object class).
//
//	connectors:
//	  - name: directory
//	    type: ldap
//	    system: directory
//	    config:
//	      url: ldaps://ldap.example.org       # or ldap://...:389 with start_tls: true
//	      bind_dn: cn=tenure,ou=services,dc=example,dc=org
//	      bind_password: {file: /run/secrets/ldap}
//	      base_dn: ou=people,dc=example,dc=org     # where users live (and are created)
//	      group_base_dn: ou=groups,dc=example,dc=org
//	      groups: [ehr-readers, ehr-writers]       # entitlements: the groups' cn
//	      mode: openldap                           # or active_directory
//	      username_attribute: uid                  # default uid; sAMAccountName for AD
//	      object_classes: [top, person, organizationalPerson, inetOrgPerson]  # for new users
//	      user_filter: (objectClass=inetOrgPerson) # which entries under base_dn are accounts
//	      ca_file: /etc/ssl/certs/corp-ca.pem      # extra CA for ldaps/StartTLS
//	      timeout: 10s
//	      page_size: 500                           # ListAccounts page (paged results control)
//
// # OpenLDAP
//
// New users are inetOrgPerson entries uid=<username>,<base_dn> with cn, sn, givenName, mail,
// displayName and employeeNumber (the worker id). tenure sets no password: how people
// authenticate is the directory's business. Disabling sets pwdAccountLockedTime to
// 000001010000Z, the ppolicy overlay's "locked until an administrator unlocks" value, and reads
// it back; enabling deletes it. The lock is enforced only when slapd loads the ppolicy overlay
// and a policy applies to the user (ppolicy_default, or pwdPolicySubentry): without a policy
// the attribute is stored and the user can still bind, which no read-back of the attribute can
// see. The bind account needs write access to pwdAccountLockedTime (manage access, or the
// rootdn). Deleting a user first removes it from the configured groups, since OpenLDAP keeps
// dangling member values unless the refint overlay is loaded.
//
// The account ID is entryUUID (RFC 4530), which survives renames and moves.
//
// RevokeCredentials (called on every leaver's disable, after it) deletes the entry's
// userPassword values, so the password no longer binds, also once the account is unlocked
// again; an entry without a password is already revoked. ppolicy clears the lock of an entry
// whose password changes, so a locked entry is locked again at once and read back. The bind
// account needs write access to userPassword.
//
// # Active Directory
//
// With mode: active_directory, disabling sets the ACCOUNTDISABLE bit (0x2) of
// userAccountControl, enabling clears it, and the state is read from it; every other flag is
// left as it was. New users are user objects CN=<username>,<base_dn> with sAMAccountName,
// employeeID and userAccountControl 514 (NORMAL_ACCOUNT | ACCOUNTDISABLE): AD refuses an
// enabled account without a password, and tenure sets none, so an AD account is created
// disabled and EnableAccount succeeds once the account has a credential (set by the
// helpdesk, self-service reset or the organisation's own process). RevokeCredentials cannot
// delete an AD password, so it replaces unicodePwd with a random one nobody knows (AD accepts
// that only over ldaps or StartTLS, and the bind account needs the Reset Password right); it
// is not tested against a real AD. The account ID is the
// objectGUID in its usual string form. Group memberships in AD are kept consistent by the
// directory itself.
//
// # Errors and security
//
// LDAP result codes map onto connector error kinds: connection failures, busy, unavailable
// and time limits are retryable; invalid credentials, insufficient access, schema and
// constraint violations are permanent; noSuchObject for a user is "not found". Errors never
// contain bind_password. ldap:// without StartTLS is refused for hosts other than loopback
// unless allow_insecure is set: a bind password and workforce identity data must not cross a
// network in the clear.
package ldap

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf16"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/tenure-dev/tenure/pkg/connector"
)

// TypeName is the name this connector registers under.
const TypeName = "ldap"

func init() {
	connector.Register(TypeName, open)
	connector.RegisterCatalog(TypeName, func(decode func(any) error) ([]string, error) {
		var cfg Config
		err := decode(&cfg)
		return cfg.Groups, err
	})
}

func open(ctx context.Context, decode func(any) error) (connector.Connector, error) {
	var cfg Config
	if err := decode(&cfg); err != nil {
		return nil, err
	}
	return New(cfg)
}

// Modes.
const (
	ModeOpenLDAP        = "openldap"
	ModeActiveDirectory = "active_directory"
)

// Config configures the connector; see the package doc for an example.
type Config struct {
	URL          string           `yaml:"url"`
	StartTLS     bool             `yaml:"start_tls"`
	CAFile       string           `yaml:"ca_file"`
	BindDN       string           `yaml:"bind_dn"`
	BindPassword connector.Secret `yaml:"bind_password"`
	BaseDN       string           `yaml:"base_dn"`
	GroupBaseDN  string           `yaml:"group_base_dn"`
	Groups       []string         `yaml:"groups"`
	// Mode is openldap (default) or active_directory.
	Mode              string        `yaml:"mode"`
	UsernameAttribute string        `yaml:"username_attribute"`
	ObjectClasses     []string      `yaml:"object_classes"`
	UserFilter        string        `yaml:"user_filter"`
	Timeout           time.Duration `yaml:"timeout"`
	PageSize          int           `yaml:"page_size"`
	// AllowInsecure permits ldap:// without StartTLS to a host other than loopback.
	AllowInsecure bool `yaml:"allow_insecure"`
}

const (
	defaultTimeout  = 10 * time.Second
	defaultPageSize = 500
	maxPageSize     = 5000
	// lockedForever is ppolicy's "locked until an administrator unlocks it" value.
	lockedForever = "000001010000Z"
	attrLocked    = "pwdAccountLockedTime"
	attrUAC       = "userAccountControl"
	// attrPassword holds an OpenLDAP user's password; attrUnicodePwd an AD user's (write-only).
	attrPassword   = "userPassword"
	attrUnicodePwd = "unicodePwd"
)

func (c *Config) setDefaults() {
	if c.Mode == "" {
		c.Mode = ModeOpenLDAP
	}
	ad := c.Mode == ModeActiveDirectory
	if c.UsernameAttribute == "" {
		c.UsernameAttribute = "uid"
		if ad {
			c.UsernameAttribute = "sAMAccountName"
		}
	}
	if len(c.ObjectClasses) == 0 {
		c.ObjectClasses = []string{"top", "person", "organizationalPerson", "inetOrgPerson"}
		if ad {
			c.ObjectClasses = []string{"top", "person", "organizationalPerson", "user"}
		}
	}
	if c.UserFilter == "" {
		c.UserFilter = "(objectClass=" + c.ObjectClasses[len(c.ObjectClasses)-1] + ")"
		if ad {
			// objectClass=user alone matches computer accounts too.
			c.UserFilter = "(&(objectCategory=person)(objectClass=user))"
		}
	}
	if c.Timeout == 0 {
		c.Timeout = defaultTimeout
	}
	if c.PageSize == 0 {
		c.PageSize = defaultPageSize
	}
}

func (c *Config) validate() error {
	var errs []error
	switch u, err := url.Parse(c.URL); {
	case c.URL == "":
		errs = append(errs, errors.New("url is required"))
	case err != nil:
		errs = append(errs, errors.New("url is not a valid URL"))
	case u.Scheme != "ldap" && u.Scheme != "ldaps" || u.Host == "":
		errs = append(errs, fmt.Errorf("url %q must be ldap://host[:port] or ldaps://host[:port]", c.URL))
	case u.User != nil:
		errs = append(errs, errors.New("url must not contain credentials; use bind_dn and bind_password"))
	case u.Scheme == "ldaps" && c.StartTLS:
		errs = append(errs, errors.New("start_tls is for ldap:// URLs; ldaps:// is TLS already"))
	case u.Scheme == "ldap" && !c.StartTLS && !c.AllowInsecure && !isLoopback(u.Hostname()):
		errs = append(errs, fmt.Errorf("url %q is unencrypted: use ldaps://, start_tls: true, or set allow_insecure", c.URL))
	}
	if c.BindDN == "" {
		errs = append(errs, errors.New("bind_dn is required"))
	} else if _, err := goldap.ParseDN(c.BindDN); err != nil {
		errs = append(errs, fmt.Errorf("bind_dn %q is not a DN", c.BindDN))
	}
	if c.BindPassword.IsZero() {
		errs = append(errs, errors.New("bind_password is required"))
	}
	if c.BaseDN == "" {
		errs = append(errs, errors.New("base_dn is required"))
	} else if _, err := goldap.ParseDN(c.BaseDN); err != nil {
		errs = append(errs, fmt.Errorf("base_dn %q is not a DN", c.BaseDN))
	}
	if c.GroupBaseDN != "" {
		if _, err := goldap.ParseDN(c.GroupBaseDN); err != nil {
			errs = append(errs, fmt.Errorf("group_base_dn %q is not a DN", c.GroupBaseDN))
		}
	} else if len(c.Groups) > 0 {
		errs = append(errs, errors.New("group_base_dn is required when groups are configured"))
	}
	seen := map[string]bool{}
	for _, g := range c.Groups {
		switch {
		case g == "" || strings.IndexFunc(g, unicode.IsControl) >= 0:
			errs = append(errs, fmt.Errorf("group %q is not a valid cn", g))
		case seen[strings.ToLower(g)]:
			errs = append(errs, fmt.Errorf("group %q is listed twice", g))
		}
		seen[strings.ToLower(g)] = true
	}
	switch c.Mode {
	case ModeOpenLDAP, ModeActiveDirectory:
	default:
		errs = append(errs, fmt.Errorf("mode %q must be %s or %s", c.Mode, ModeOpenLDAP, ModeActiveDirectory))
	}
	if strings.ContainsAny(c.UsernameAttribute, "()=*\\ ") {
		errs = append(errs, fmt.Errorf("username_attribute %q is not an attribute name", c.UsernameAttribute))
	}
	if _, err := goldap.CompileFilter(c.UserFilter); err != nil {
		errs = append(errs, fmt.Errorf("user_filter %q: %v", c.UserFilter, err))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout %v must not be negative", c.Timeout))
	}
	if c.PageSize < 0 || c.PageSize > maxPageSize {
		errs = append(errs, fmt.Errorf("page_size %d must be between 1 and %d", c.PageSize, maxPageSize))
	}
	return errors.Join(errs...)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Connector manages the users under one base DN.
type Connector struct {
	cfg      Config
	ad       bool
	idAttr   string
	tls      *tls.Config
	password func() (string, error) // a closure, so printing the connector shows no secret

	mu   sync.Mutex
	conn *goldap.Conn
	gen  uint64 // grows with each new connection; page tokens name theirs

	groupsMu sync.Mutex
	groups   map[string]groupInfo // by lowercased cn, as resolved
}

type groupInfo struct {
	dn         string
	memberAttr string // member or uniqueMember
}

var (
	_ connector.Connector          = (*Connector)(nil)
	_ connector.Creator            = (*Connector)(nil)
	_ connector.Disabler           = (*Connector)(nil)
	_ connector.Enabler            = (*Connector)(nil)
	_ connector.Deleter            = (*Connector)(nil)
	_ connector.EntitlementGranter = (*Connector)(nil)
	_ connector.Lister             = (*Connector)(nil)
	_ connector.CredentialRevoker  = (*Connector)(nil)
)

// New validates cfg. It does not connect: the first call does, so a directory that is down
// at start-up shows up as retryable errors, not as a host that cannot start.
func New(cfg Config) (*Connector, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if _, err := cfg.BindPassword.Resolve(); err != nil {
		return nil, fmt.Errorf("bind_password: %w", err)
	}
	u, _ := url.Parse(cfg.URL)
	tc := &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificates", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	c := &Connector{
		cfg:      cfg,
		ad:       cfg.Mode == ModeActiveDirectory,
		idAttr:   "entryUUID",
		tls:      tc,
		password: cfg.BindPassword.Resolve,
		groups:   map[string]groupInfo{},
	}
	if c.ad {
		c.idAttr = "objectGUID"
	}
	return c, nil
}

// Close closes the connection.
func (c *Connector) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
	return nil
}

// connect returns the shared connection, dialling and binding if there is none. go-ldap
// multiplexes requests on one connection, so calls share it.
func (c *Connector) connect(ctx context.Context) (*goldap.Conn, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, connector.Retryable(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil && !c.conn.IsClosing() {
		return c.conn, c.gen, nil
	}
	timeout := c.cfg.Timeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	conn, err := goldap.DialURL(c.cfg.URL,
		goldap.DialWithDialer(&net.Dialer{Timeout: timeout}),
		goldap.DialWithTLSConfig(c.tls))
	if err != nil {
		return nil, 0, connector.Retryable(fmt.Errorf("ldap: connect: %w", err))
	}
	conn.SetTimeout(c.cfg.Timeout)
	if c.cfg.StartTLS {
		if err := conn.StartTLS(c.tls); err != nil {
			conn.Close()
			return nil, 0, classify(fmt.Errorf("ldap: StartTLS: %w", err))
		}
	}
	pw, err := c.password()
	if err != nil {
		conn.Close()
		return nil, 0, connector.Retryable(fmt.Errorf("ldap: bind_password: %w", err))
	}
	if err := conn.Bind(c.cfg.BindDN, pw); err != nil {
		conn.Close()
		if goldap.IsErrorWithCode(err, goldap.LDAPResultInvalidCredentials) {
			return nil, 0, connector.Permanent(fmt.Errorf("ldap: bind as %q: invalid credentials (check bind_dn and bind_password)", c.cfg.BindDN))
		}
		return nil, 0, classify(fmt.Errorf("ldap: bind as %q: %w", c.cfg.BindDN, err))
	}
	c.conn = conn
	c.gen++
	return conn, c.gen, nil
}

// dropped forgets conn after a network error so the next call dials again.
func (c *Connector) dropped(conn *goldap.Conn, err error) {
	if !goldap.IsErrorWithCode(err, goldap.ErrorNetwork) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == conn {
		c.conn.Close()
		c.conn = nil
	}
}

// classify maps LDAP errors onto connector error kinds.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var ce *connector.Error
	if errors.As(err, &ce) {
		return err
	}
	var le *goldap.Error
	if !errors.As(err, &le) {
		return connector.Retryable(err)
	}
	switch le.ResultCode {
	case goldap.LDAPResultNoSuchObject:
		return connector.NotFound(err)
	case goldap.ErrorNetwork, goldap.LDAPResultBusy, goldap.LDAPResultUnavailable,
		goldap.LDAPResultTimeLimitExceeded, goldap.LDAPResultAdminLimitExceeded,
		goldap.LDAPResultOther, goldap.LDAPResultLoopDetect, goldap.LDAPResultServerDown,
		goldap.LDAPResultTimeout, goldap.LDAPResultConnectError:
		return connector.Retryable(err)
	case goldap.LDAPResultInvalidCredentials, goldap.LDAPResultInsufficientAccessRights,
		goldap.LDAPResultInappropriateAuthentication, goldap.LDAPResultStrongAuthRequired,
		goldap.LDAPResultConfidentialityRequired, goldap.LDAPResultAuthMethodNotSupported,
		goldap.LDAPResultUnwillingToPerform, goldap.LDAPResultConstraintViolation,
		goldap.LDAPResultObjectClassViolation, goldap.LDAPResultNamingViolation,
		goldap.LDAPResultUndefinedAttributeType, goldap.LDAPResultInvalidAttributeSyntax,
		goldap.LDAPResultInvalidDNSyntax, goldap.LDAPResultAttributeOrValueExists,
		goldap.LDAPResultNoSuchAttribute, goldap.LDAPResultEntryAlreadyExists,
		goldap.LDAPResultNotAllowedOnNonLeaf, goldap.LDAPResultNotAllowedOnRDN,
		goldap.LDAPResultObjectClassModsProhibited, goldap.LDAPResultProtocolError,
		goldap.LDAPResultInappropriateMatching, goldap.LDAPResultAffectsMultipleDSAs,
		goldap.ErrorFilterCompile, goldap.ErrorFilterDecompile,
		goldap.LDAPResultUnavailableCriticalExtension, goldap.LDAPResultReferral:
		return connector.Permanent(err)
	}
	return connector.Retryable(err)
}

// do runs f on the shared connection and classifies its error.
func (c *Connector) do(ctx context.Context, f func(conn *goldap.Conn) error) error {
	conn, _, err := c.connect(ctx)
	if err != nil {
		return err
	}
	if err := f(conn); err != nil {
		c.dropped(conn, err)
		return classify(err)
	}
	return nil
}

func (c *Connector) userAttrs() []string {
	attrs := []string{"dn", c.cfg.UsernameAttribute, c.idAttr, "cn", "displayName", "mail"}
	if c.ad {
		return append(attrs, attrUAC)
	}
	// pwdAccountLockedTime and entryUUID are operational: returned only when asked for.
	return append(attrs, attrLocked)
}

// checkUsername refuses what cannot be a username before it reaches a filter or a DN.
func checkUsername(s string) error {
	if s == "" || strings.TrimSpace(s) != s || strings.IndexFunc(s, unicode.IsControl) >= 0 || len(s) > 256 {
		return connector.Permanent(fmt.Errorf("username %q must be 1 to 256 characters, without surrounding space or control characters", s))
	}
	return nil
}

// idFilter is the filter matching the account ID.
func (c *Connector) idFilter(id string) (string, error) {
	if c.ad {
		b, err := guidBytes(id)
		if err != nil {
			return "", connector.Permanent(err)
		}
		return "(objectGUID=" + escapeBytes(b) + ")", nil
	}
	if !isUUID(id) {
		return "", connector.Permanent(fmt.Errorf("account id %q is not an entryUUID", id))
	}
	return "(entryUUID=" + id + ")", nil
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if r != '-' {
				return false
			}
		case !strings.ContainsRune("0123456789abcdefABCDEF", r):
			return false
		}
	}
	return true
}

// search runs a subtree search under base (no paging) and returns the entries.
func (c *Connector) search(ctx context.Context, base, filter string, attrs []string) ([]*goldap.Entry, error) {
	var res *goldap.SearchResult
	err := c.do(ctx, func(conn *goldap.Conn) error {
		var err error
		res, err = conn.Search(goldap.NewSearchRequest(base, goldap.ScopeWholeSubtree, goldap.NeverDerefAliases,
			0, int(c.cfg.Timeout/time.Second), false, filter, attrs, nil))
		return err
	})
	if err != nil {
		return nil, err
	}
	return res.Entries, nil
}

// lookup finds the user entry ref names.
func (c *Connector) lookup(ctx context.Context, ref connector.AccountRef) (*goldap.Entry, error) {
	var f, what string
	switch {
	case ref.ID != "":
		idf, err := c.idFilter(ref.ID)
		if err != nil {
			return nil, err
		}
		f, what = idf, fmt.Sprintf("%s %s", c.idAttr, ref.ID)
	case ref.Username != "":
		if err := checkUsername(ref.Username); err != nil {
			return nil, err
		}
		f = "(" + c.cfg.UsernameAttribute + "=" + goldap.EscapeFilter(ref.Username) + ")"
		what = fmt.Sprintf("%s=%s", c.cfg.UsernameAttribute, ref.Username)
	default:
		return nil, connector.Permanent(errors.New("empty account reference"))
	}
	entries, err := c.search(ctx, c.cfg.BaseDN, "(&"+c.cfg.UserFilter+f+")", c.userAttrs())
	if errors.Is(err, connector.ErrNotFound) {
		// noSuchObject on the search base: configuration, not an absent user.
		return nil, connector.Permanent(fmt.Errorf("base_dn %q does not exist: %w", c.cfg.BaseDN, err))
	}
	if err != nil {
		return nil, err
	}
	switch len(entries) {
	case 0:
		return nil, connector.NotFound(fmt.Errorf("%w: no entry with %s under %s", connector.ErrNotFound, what, c.cfg.BaseDN))
	case 1:
		return entries[0], nil
	default:
		return nil, connector.Permanent(fmt.Errorf("%d entries with %s under %s", len(entries), what, c.cfg.BaseDN))
	}
}

// state reads the account state from an entry.
func (c *Connector) state(e *goldap.Entry) connector.AccountState {
	if c.ad {
		disabled, ok := uacState(e.GetEqualFoldAttributeValue(attrUAC))
		switch {
		case !ok:
			return connector.StateUnknown
		case disabled:
			return connector.StateDisabled
		}
		return connector.StateEnabled
	}
	// Only the permanent lock is an administrative disable; another time is a ppolicy
	// lockout after failed binds, which expires by itself.
	if e.GetEqualFoldAttributeValue(attrLocked) == lockedForever {
		return connector.StateDisabled
	}
	return connector.StateEnabled
}

func (c *Connector) entryID(e *goldap.Entry) string {
	if c.ad {
		s, err := guidString(e.GetEqualFoldRawAttributeValue("objectGUID"))
		if err != nil {
			return ""
		}
		return s
	}
	return e.GetEqualFoldAttributeValue("entryUUID")
}

func (c *Connector) account(e *goldap.Entry, ents []string) connector.Account {
	acc := connector.Account{
		ID:           c.entryID(e),
		Username:     e.GetEqualFoldAttributeValue(c.cfg.UsernameAttribute),
		Email:        e.GetEqualFoldAttributeValue("mail"),
		DisplayName:  e.GetEqualFoldAttributeValue("displayName"),
		State:        c.state(e),
		Entitlements: ents,
	}
	if acc.DisplayName == "" {
		acc.DisplayName = e.GetEqualFoldAttributeValue("cn")
	}
	return acc
}

// group resolves a configured group by cn under group_base_dn. A group that is not
// configured, missing, or ambiguous is a Permanent error.
func (c *Connector) group(ctx context.Context, cn string) (groupInfo, error) {
	i := slices.IndexFunc(c.cfg.Groups, func(g string) bool { return strings.EqualFold(g, cn) })
	if i < 0 {
		known := strings.Join(c.cfg.Groups, ", ")
		if known == "" {
			known = "none configured"
		}
		return groupInfo{}, connector.Permanent(fmt.Errorf("entitlement %q is not a configured group (groups: %s)", cn, known))
	}
	key := strings.ToLower(cn)
	c.groupsMu.Lock()
	g, ok := c.groups[key]
	c.groupsMu.Unlock()
	if ok {
		return g, nil
	}
	entries, err := c.search(ctx, c.cfg.GroupBaseDN,
		"(&"+c.groupClassFilter()+"(cn="+goldap.EscapeFilter(cn)+"))", []string{"objectClass"})
	if errors.Is(err, connector.ErrNotFound) {
		return groupInfo{}, connector.Permanent(fmt.Errorf("group_base_dn %q does not exist: %w", c.cfg.GroupBaseDN, err))
	}
	if err != nil {
		return groupInfo{}, err
	}
	switch len(entries) {
	case 0:
		return groupInfo{}, connector.Permanent(fmt.Errorf("entitlement %q: no group with cn=%s under %s", cn, cn, c.cfg.GroupBaseDN))
	case 1:
	default:
		return groupInfo{}, connector.Permanent(fmt.Errorf("entitlement %q: %d groups with cn=%s under %s", cn, len(entries), cn, c.cfg.GroupBaseDN))
	}
	g = groupInfo{dn: entries[0].DN, memberAttr: "member"}
	for _, oc := range entries[0].GetEqualFoldAttributeValues("objectClass") {
		if strings.EqualFold(oc, "groupOfUniqueNames") {
			g.memberAttr = "uniqueMember"
		}
	}
	c.groupsMu.Lock()
	c.groups[key] = g
	c.groupsMu.Unlock()
	return g, nil
}

func (c *Connector) forget(cn string) {
	c.groupsMu.Lock()
	delete(c.groups, strings.ToLower(cn))
	c.groupsMu.Unlock()
}

func (c *Connector) groupClassFilter() string {
	if c.ad {
		return "(objectClass=group)"
	}
	return "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"
}

// configuredGroupsFilter matches the configured groups by cn.
func (c *Connector) configuredGroupsFilter() string {
	var b strings.Builder
	b.WriteString("(&" + c.groupClassFilter() + "(|")
	for _, g := range c.cfg.Groups {
		b.WriteString("(cn=" + goldap.EscapeFilter(g) + ")")
	}
	b.WriteString("))")
	return b.String()
}

// canonical returns the configured spelling of a group cn read from the directory.
func (c *Connector) canonical(cn string) (string, bool) {
	i := slices.IndexFunc(c.cfg.Groups, func(g string) bool { return strings.EqualFold(g, cn) })
	if i < 0 {
		return "", false
	}
	return c.cfg.Groups[i], true
}

// entitlementsOf lists the configured groups that have dn as a member. The directory
// compares DNs with its own matching rules, so spelling differences do not matter.
func (c *Connector) entitlementsOf(ctx context.Context, dn string) ([]string, error) {
	if len(c.cfg.Groups) == 0 {
		return nil, nil
	}
	v := goldap.EscapeFilter(dn)
	member := "(member=" + v + ")"
	if !c.ad {
		member = "(|(member=" + v + ")(uniqueMember=" + v + "))"
	}
	entries, err := c.search(ctx, c.cfg.GroupBaseDN, "(&"+c.configuredGroupsFilter()+member+")", []string{"cn"})
	if errors.Is(err, connector.ErrNotFound) {
		return nil, connector.Permanent(fmt.Errorf("group_base_dn %q does not exist: %w", c.cfg.GroupBaseDN, err))
	}
	if err != nil {
		return nil, err
	}
	var held []string
	for _, e := range entries {
		for _, cn := range e.GetEqualFoldAttributeValues("cn") {
			if g, ok := c.canonical(cn); ok && !slices.Contains(held, g) {
				held = append(held, g)
			}
		}
	}
	slices.Sort(held)
	return held, nil
}

// GetAccount reads the user entry and its configured group memberships.
func (c *Connector) GetAccount(ctx context.Context, ref connector.AccountRef) (connector.Account, error) {
	e, err := c.lookup(ctx, ref)
	if err != nil {
		return connector.Account{}, err
	}
	ents, err := c.entitlementsOf(ctx, e.DN)
	if err != nil {
		return connector.Account{}, err
	}
	return c.account(e, ents), nil
}

// newUser is the DN and attributes of a new user entry.
func (c *Connector) newUser(spec connector.AccountSpec) (string, []goldap.Attribute) {
	var attrs []goldap.Attribute
	add := func(name, value string) {
		if value != "" {
			attrs = append(attrs, goldap.Attribute{Type: name, Vals: []string{value}})
		}
	}
	attrs = append(attrs, goldap.Attribute{Type: "objectClass", Vals: slices.Clone(c.cfg.ObjectClasses)})
	add(c.cfg.UsernameAttribute, spec.Username)
	cn := spec.DisplayName
	if cn == "" {
		cn = strings.TrimSpace(spec.GivenName + " " + spec.FamilyName)
	}
	if cn == "" {
		cn = spec.Username
	}
	sn := spec.FamilyName
	if sn == "" {
		sn = spec.Username // sn is required by person
	}
	if c.ad {
		add("cn", spec.Username)
		add("sn", spec.FamilyName)
		add("givenName", spec.GivenName)
		add("displayName", cn)
		add("mail", spec.Email)
		add("employeeID", spec.WorkerID)
		// No password is set, and AD refuses an enabled account without one.
		add(attrUAC, formatUAC(uacNormalAccount|uacAccountDisable))
		return "CN=" + goldap.EscapeDN(spec.Username) + "," + c.cfg.BaseDN, attrs
	}
	if !strings.EqualFold(c.cfg.UsernameAttribute, "cn") {
		add("cn", cn)
	}
	add("sn", sn)
	add("givenName", spec.GivenName)
	add("displayName", spec.DisplayName)
	add("mail", spec.Email)
	add("employeeNumber", spec.WorkerID)
	return c.cfg.UsernameAttribute + "=" + goldap.EscapeDN(spec.Username) + "," + c.cfg.BaseDN, attrs
}

// CreateAccount adds the user entry and its groups, or returns the existing user unchanged.
func (c *Connector) CreateAccount(ctx context.Context, spec connector.AccountSpec) (connector.Account, error) {
	if err := checkUsername(spec.Username); err != nil {
		return connector.Account{}, err
	}
	var groups []groupInfo
	for _, e := range spec.Entitlements {
		g, err := c.group(ctx, e)
		if err != nil {
			return connector.Account{}, err
		}
		groups = append(groups, g)
	}
	ref := connector.AccountRef{Username: spec.Username}
	acc, err := c.GetAccount(ctx, ref)
	if err == nil || !errors.Is(err, connector.ErrNotFound) {
		return acc, err
	}
	dn, attrs := c.newUser(spec)
	req := goldap.NewAddRequest(dn, nil)
	req.Attributes = attrs
	err = c.do(ctx, func(conn *goldap.Conn) error { return conn.Add(req) })
	switch {
	case err == nil:
	case goldap.IsErrorWithCode(err, goldap.LDAPResultEntryAlreadyExists):
		// A concurrent create won, or the DN is taken by an entry that is not an account.
		acc, gerr := c.GetAccount(ctx, ref)
		if errors.Is(gerr, connector.ErrNotFound) {
			return connector.Account{}, connector.Permanent(fmt.Errorf("%s exists but is not an account this connector manages (user_filter %s)", dn, c.cfg.UserFilter))
		}
		return acc, gerr
	case errors.Is(err, connector.ErrNotFound):
		return connector.Account{}, connector.Permanent(fmt.Errorf("base_dn %q does not exist: %w", c.cfg.BaseDN, err))
	default:
		return connector.Account{}, err
	}
	for i, g := range groups {
		if err := c.modifyMember(ctx, g, dn, true); err != nil {
			return connector.Account{}, fmt.Errorf("user %q created, adding to group %q: %w", spec.Username, spec.Entitlements[i], err)
		}
	}
	return c.GetAccount(ctx, ref)
}

// DisableAccount locks the account (OpenLDAP) or sets ACCOUNTDISABLE (AD), then reads the
// entry back and fails unless it shows the change.
func (c *Connector) DisableAccount(ctx context.Context, ref connector.AccountRef) error {
	return c.setState(ctx, ref, connector.StateDisabled)
}

// EnableAccount removes the lock (OpenLDAP) or clears ACCOUNTDISABLE (AD), and reads back.
func (c *Connector) EnableAccount(ctx context.Context, ref connector.AccountRef) error {
	return c.setState(ctx, ref, connector.StateEnabled)
}

func (c *Connector) setState(ctx context.Context, ref connector.AccountRef, want connector.AccountState) error {
	e, err := c.lookup(ctx, ref)
	if err != nil {
		return err
	}
	if c.state(e) == want {
		return nil
	}
	req := goldap.NewModifyRequest(e.DN, nil)
	switch {
	case c.ad:
		v, err := parseUAC(e.GetEqualFoldAttributeValue(attrUAC))
		if err != nil {
			return connector.Permanent(fmt.Errorf("%s: %w", e.DN, err))
		}
		req.Replace(attrUAC, []string{formatUAC(withDisabled(v, want == connector.StateDisabled))})
	case want == connector.StateDisabled:
		req.Replace(attrLocked, []string{lockedForever})
	default:
		req.Delete(attrLocked, nil)
	}
	err = c.do(ctx, func(conn *goldap.Conn) error { return conn.Modify(req) })
	switch {
	case err == nil:
	case !c.ad && want == connector.StateEnabled && goldap.IsErrorWithCode(err, goldap.LDAPResultNoSuchAttribute):
		// Unlocked meanwhile.
	case !c.ad && goldap.IsErrorWithCode(err, goldap.LDAPResultUndefinedAttributeType):
		return connector.Permanent(fmt.Errorf("%s: the directory does not know pwdAccountLockedTime: load the ppolicy overlay (and set ppolicy_default): %w", e.DN, err))
	case errors.Is(err, connector.ErrNotFound):
		return connector.NotFound(fmt.Errorf("%w: %s vanished: %v", connector.ErrNotFound, e.DN, err))
	default:
		return err
	}
	// Read back: what counts is what the directory now says.
	back, err := c.lookup(ctx, connector.AccountRef{ID: c.entryID(e), Username: ref.Username})
	if err != nil {
		return err
	}
	if got := c.state(back); got != want {
		return connector.Retryable(fmt.Errorf("%s: the directory accepted the change but reads back %v, not %v", e.DN, got, want))
	}
	return nil
}

// RevokeCredentials deletes the user's userPassword (OpenLDAP) or replaces its unicodePwd with
// a random password nobody knows (AD). Revoking revoked credentials succeeds.
func (c *Connector) RevokeCredentials(ctx context.Context, ref connector.AccountRef) error {
	e, err := c.lookup(ctx, ref)
	if err != nil {
		return err
	}
	req := goldap.NewModifyRequest(e.DN, nil)
	if c.ad {
		pw, err := scrambledPassword()
		if err != nil {
			return err
		}
		req.Replace(attrUnicodePwd, []string{pw})
	} else {
		req.Delete(attrPassword, nil)
	}
	err = c.do(ctx, func(conn *goldap.Conn) error { return conn.Modify(req) })
	switch {
	case err == nil:
	case !c.ad && goldap.IsErrorWithCode(err, goldap.LDAPResultNoSuchAttribute):
		// No password: nothing to revoke.
	case errors.Is(err, connector.ErrNotFound):
		return connector.NotFound(fmt.Errorf("%w: %s vanished: %v", connector.ErrNotFound, e.DN, err))
	default:
		return err
	}
	if !c.ad && c.state(e) == connector.StateDisabled {
		// The ppolicy overlay unlocks an account whose password changes, deletion included:
		// lock it again, so revoking a leaver's password never undoes the disable. In between
		// the entry has no password to bind with.
		return c.setState(ctx, connector.AccountRef{ID: c.entryID(e), Username: ref.Username}, connector.StateDisabled)
	}
	return nil
}

// scrambledPassword returns a random password in unicodePwd's encoding: the password in
// double quotes, UTF-16LE. Its 256 random bits, base64-encoded, with a fixed tail that
// meets AD's complexity rules, are never stored or logged.
func scrambledPassword() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return encodeUnicodePwd(base64.RawStdEncoding.EncodeToString(b) + "Aa1!"), nil
}

func encodeUnicodePwd(pw string) string {
	u := utf16.Encode([]rune(`"` + pw + `"`))
	out := make([]byte, 0, 2*len(u))
	for _, r := range u {
		out = append(out, byte(r), byte(r>>8))
	}
	return string(out)
}

// DeleteAccount removes the user from the configured groups (OpenLDAP) and deletes the entry.
// An absent user is already deleted.
func (c *Connector) DeleteAccount(ctx context.Context, ref connector.AccountRef) error {
	e, err := c.lookup(ctx, ref)
	if errors.Is(err, connector.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if !c.ad {
		held, err := c.entitlementsOf(ctx, e.DN)
		if err != nil {
			return err
		}
		for _, cn := range held {
			g, err := c.group(ctx, cn)
			if err != nil {
				continue
			}
			// A group left without members keeps a dangling value instead; deleting the
			// account matters more than a tidy group.
			if err := c.modifyMember(ctx, g, e.DN, false); err != nil && connector.KindOf(err) != connector.KindPermanent {
				return err
			}
		}
	}
	err = c.do(ctx, func(conn *goldap.Conn) error { return conn.Del(goldap.NewDelRequest(e.DN, nil)) })
	if errors.Is(err, connector.ErrNotFound) {
		return nil
	}
	return err
}

// GrantEntitlement adds the user to the group.
func (c *Connector) GrantEntitlement(ctx context.Context, ref connector.AccountRef, entitlement string) error {
	return c.membership(ctx, ref, entitlement, true)
}

// RevokeEntitlement removes the user from the group.
func (c *Connector) RevokeEntitlement(ctx context.Context, ref connector.AccountRef, entitlement string) error {
	return c.membership(ctx, ref, entitlement, false)
}

func (c *Connector) membership(ctx context.Context, ref connector.AccountRef, entitlement string, add bool) error {
	g, err := c.group(ctx, entitlement)
	if err != nil {
		return err
	}
	e, err := c.lookup(ctx, ref)
	if err != nil {
		return err
	}
	// Check first: AD answers "already a member" and "not a member" with codes that also
	// mean real failures.
	held, err := c.entitlementsOf(ctx, e.DN)
	if err != nil {
		return err
	}
	name, _ := c.canonical(entitlement)
	if slices.Contains(held, name) == add {
		return nil
	}
	err = c.modifyMember(ctx, g, e.DN, add)
	if errors.Is(err, connector.ErrNotFound) {
		c.forget(entitlement)
		return connector.Permanent(fmt.Errorf("entitlement %q: group %s is gone: %w", entitlement, g.dn, err))
	}
	return err
}

func (c *Connector) modifyMember(ctx context.Context, g groupInfo, dn string, add bool) error {
	req := goldap.NewModifyRequest(g.dn, nil)
	if add {
		req.Add(g.memberAttr, []string{dn})
	} else {
		req.Delete(g.memberAttr, []string{dn})
	}
	err := c.do(ctx, func(conn *goldap.Conn) error { return conn.Modify(req) })
	switch {
	case err == nil:
		return nil
	case add && goldap.IsErrorWithCode(err, goldap.LDAPResultAttributeOrValueExists):
		return nil
	case !add && goldap.IsErrorWithCode(err, goldap.LDAPResultNoSuchAttribute):
		return nil
	case !add && goldap.IsErrorWithCode(err, goldap.LDAPResultObjectClassViolation):
		return connector.Permanent(fmt.Errorf("%s would be left without a %s, which its object class requires: give the group a placeholder member: %w", g.dn, g.memberAttr, err))
	}
	return err
}

// pageToken is the paged-results cookie and the connection it belongs to: a cookie is only
// valid on the connection that started the search.
func encodeToken(gen uint64, cookie []byte) string {
	return base64.RawURLEncoding.EncodeToString(append([]byte(strconv.FormatUint(gen, 10)+":"), cookie...))
}

func decodeToken(tok string) (uint64, []byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return 0, nil, err
	}
	g, cookie, ok := strings.Cut(string(b), ":")
	if !ok {
		return 0, nil, errors.New("no generation")
	}
	gen, err := strconv.ParseUint(g, 10, 64)
	if err != nil {
		return 0, nil, err
	}
	return gen, []byte(cookie), nil
}

// ListAccounts lists the users under base_dn with the paged results control (RFC 2696).
func (c *Connector) ListAccounts(ctx context.Context, pageToken string) ([]connector.Account, string, error) {
	var cookie []byte
	var wantGen uint64
	if pageToken != "" {
		g, ck, err := decodeToken(pageToken)
		if err != nil || len(ck) == 0 {
			return nil, "", connector.Permanent(fmt.Errorf("invalid page token %q", pageToken))
		}
		wantGen, cookie = g, ck
	}
	conn, gen, err := c.connect(ctx)
	if err != nil {
		return nil, "", err
	}
	if pageToken != "" && gen != wantGen {
		return nil, "", connector.Permanent(errors.New("page token belongs to an earlier LDAP connection; start the listing again"))
	}
	paging := goldap.NewControlPaging(uint32(c.cfg.PageSize))
	paging.SetCookie(cookie)
	filter := "(&" + c.cfg.UserFilter + "(" + c.cfg.UsernameAttribute + "=*))"
	res, err := conn.Search(goldap.NewSearchRequest(c.cfg.BaseDN, goldap.ScopeWholeSubtree, goldap.NeverDerefAliases,
		0, int(c.cfg.Timeout/time.Second), false, filter, c.userAttrs(), []goldap.Control{paging}))
	if err != nil {
		c.dropped(conn, err)
		err = classify(err)
		if errors.Is(err, connector.ErrNotFound) {
			return nil, "", connector.Permanent(fmt.Errorf("base_dn %q does not exist: %w", c.cfg.BaseDN, err))
		}
		return nil, "", err
	}
	members, err := c.memberships(ctx)
	if err != nil {
		return nil, "", err
	}
	accs := make([]connector.Account, 0, len(res.Entries))
	for _, e := range res.Entries {
		accs = append(accs, c.account(e, members[normDN(e.DN)]))
	}
	next := ""
	if pc, ok := goldap.FindControl(res.Controls, goldap.ControlTypePaging).(*goldap.ControlPaging); ok && len(pc.Cookie) > 0 {
		next = encodeToken(gen, pc.Cookie)
	}
	return accs, next, nil
}

// memberships reads the configured groups' members once, for a list page: normalised member
// DN -> group cns.
func (c *Connector) memberships(ctx context.Context) (map[string][]string, error) {
	out := map[string][]string{}
	if len(c.cfg.Groups) == 0 {
		return out, nil
	}
	entries, err := c.search(ctx, c.cfg.GroupBaseDN, c.configuredGroupsFilter(), []string{"cn", "member", "uniqueMember"})
	if errors.Is(err, connector.ErrNotFound) {
		return nil, connector.Permanent(fmt.Errorf("group_base_dn %q does not exist: %w", c.cfg.GroupBaseDN, err))
	}
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		name, ok := c.canonical(e.GetEqualFoldAttributeValue("cn"))
		if !ok {
			continue
		}
		for _, attr := range []string{"member", "uniqueMember"} {
			for _, m := range e.GetEqualFoldAttributeValues(attr) {
				k := normDN(m)
				if !slices.Contains(out[k], name) {
					out[k] = append(out[k], name)
				}
			}
		}
	}
	for k := range out {
		slices.Sort(out[k])
	}
	return out, nil
}

// normDN is a comparison key for DNs: parsed and re-serialised, then lowercased (attribute
// types and the common string values compare without case).
func normDN(dn string) string {
	d, err := goldap.ParseDN(dn)
	if err != nil {
		return strings.ToLower(dn)
	}
	return strings.ToLower(d.String())
}
