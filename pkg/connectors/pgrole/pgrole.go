// Package pgrole is the "postgres" connector: PostgreSQL roles as accounts, for direct
// database access to systems holding ePHI.
//
// An account is a LOGIN role named role_prefix + username; an entitlement is membership in one
// of the configured group roles. Disabling sets NOLOGIN and then terminates the role's
// backends, because NOLOGIN only stops new connections: sessions already open keep working
// until they end.
//
//	connectors:
//	  - name: ehr-db
//	    type: postgres
//	    system: ehr
//	    config:
//	      url: {env: TENURE_EHR_DB_URL}  # admin role, see below
//	      role_prefix: ehr_              # managed roles are ehr_<username>
//	      groups: [ehr_read, ehr_write]  # entitlements
//	      create_groups: true            # create missing groups NOLOGIN on first use
//	      max_conns: 4
//
// The prefix is what the connector owns: it never reads or changes a role outside it, several
// instances can share one cluster with different prefixes, and ListAccounts returns only
// prefixed roles (so groups may not start with the prefix).
//
// The admin role in url needs CREATEROLE, membership in pg_signal_backend (to terminate
// sessions of other roles) and, from PostgreSQL 16 on, ADMIN OPTION on the groups it grants
// (it has that on groups and roles it created itself). tenure never sets passwords: how a role
// authenticates (ldap, gss, cert in pg_hba.conf) is the cluster's business, and what it may
// do is decided by the groups' privileges. It does remove them: RevokeCredentials (called on
// every leaver's disable) sets PASSWORD NULL, so a password a DBA or the person set — or a
// script's connection string holds — no longer works, even if the role is enabled again.
// Credentials the cluster does not store (client certificates, Kerberos keys) are the
// issuer's to revoke.
//
// The account ID is the role's OID, which survives renames. Email, display name and worker id
// are kept as JSON in the role's comment; comments on roles are readable by every user of the
// cluster, which is acceptable for workforce identity data and is why nothing else goes there.
package pgrole

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tenure-dev/tenure/pkg/connector"
)

// TypeName is the name this connector registers under.
const TypeName = "postgres"

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
	return New(ctx, cfg)
}

// Config configures the connector.
type Config struct {
	// URL of an admin role (see the package doc).
	URL connector.Secret `yaml:"url"`
	// RolePrefix is prepended to every username; required.
	RolePrefix string `yaml:"role_prefix"`
	// Groups are the group roles usable as entitlements.
	Groups []string `yaml:"groups"`
	// CreateGroups creates missing groups as NOLOGIN roles the first time one is needed.
	CreateGroups bool `yaml:"create_groups"`
	// MaxConns bounds the admin pool; default 4.
	MaxConns int32 `yaml:"max_conns"`
	// PageSize is the number of roles per ListAccounts page; default 500.
	PageSize int `yaml:"page_size"`
}

const (
	defaultMaxConns = 4
	defaultPageSize = 500
	// maxRoleLen is PostgreSQL's NAMEDATALEN-1: longer names are silently truncated, which
	// would make two usernames the same role.
	maxRoleLen = 63
	// terminateWait is how long to wait for each terminated backend to exit, so that a
	// confirmed disable means the sessions are gone, not just signalled.
	terminateWait = 5 * time.Second
)

var (
	usernameRE = regexp.MustCompile(`^[a-z0-9._-]+$`)
	prefixRE   = regexp.MustCompile(`^[a-z0-9._-]+$`)
)

func (c Config) validate() error {
	var errs []error
	if c.URL.IsZero() {
		errs = append(errs, errors.New("url is required"))
	}
	switch {
	case c.RolePrefix == "":
		errs = append(errs, errors.New("role_prefix is required (e.g. \"ehr_\"): it keeps managed roles apart from all others"))
	case !prefixRE.MatchString(c.RolePrefix):
		errs = append(errs, fmt.Errorf("role_prefix %q must be of [a-z0-9._-]", c.RolePrefix))
	case strings.HasPrefix(c.RolePrefix, "pg_"):
		errs = append(errs, fmt.Errorf("role_prefix %q: names starting with pg_ are reserved by PostgreSQL", c.RolePrefix))
	case len(c.RolePrefix) >= maxRoleLen:
		errs = append(errs, fmt.Errorf("role_prefix %q leaves no room for a username", c.RolePrefix))
	}
	seen := map[string]bool{}
	for _, g := range c.Groups {
		switch {
		case g == "" || len(g) > maxRoleLen:
			errs = append(errs, fmt.Errorf("group %q: must be 1 to %d characters", g, maxRoleLen))
		case c.RolePrefix != "" && strings.HasPrefix(g, c.RolePrefix):
			errs = append(errs, fmt.Errorf("group %q starts with role_prefix %q: it would be listed as an account", g, c.RolePrefix))
		case seen[g]:
			errs = append(errs, fmt.Errorf("group %q is listed twice", g))
		}
		seen[g] = true
	}
	if c.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("max_conns %d must not be negative", c.MaxConns))
	}
	if c.PageSize < 0 {
		errs = append(errs, fmt.Errorf("page_size %d must not be negative", c.PageSize))
	}
	return errors.Join(errs...)
}

// Connector manages the roles under one prefix in one cluster.
type Connector struct {
	pool         *pgxpool.Pool
	prefix       string
	groups       []string // sorted
	createGroups bool
	pageSize     int

	groupsMu    sync.Mutex
	groupsReady bool
}

var (
	_ connector.Connector          = (*Connector)(nil)
	_ connector.Creator            = (*Connector)(nil)
	_ connector.Disabler           = (*Connector)(nil)
	_ connector.Enabler            = (*Connector)(nil)
	_ connector.Deleter            = (*Connector)(nil)
	_ connector.EntitlementGranter = (*Connector)(nil)
	_ connector.SessionRevoker     = (*Connector)(nil)
	_ connector.Lister             = (*Connector)(nil)
	_ connector.CredentialRevoker  = (*Connector)(nil)
)

// New validates cfg and creates the connection pool. It does not connect: a target that is
// down at start-up shows up as retryable errors on the first calls, not as a host that
// cannot start.
func New(ctx context.Context, cfg Config) (*Connector, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	url, err := cfg.URL.Resolve()
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx echoes the URL, password included, in some parse errors.
		return nil, errors.New("url: not a valid PostgreSQL connection string")
	}
	pc.MaxConns = cfg.MaxConns
	if pc.MaxConns == 0 {
		pc.MaxConns = defaultMaxConns
	}
	if _, ok := pc.ConnConfig.RuntimeParams["application_name"]; !ok {
		pc.ConnConfig.RuntimeParams["application_name"] = "tenure-pgrole"
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, classify(err)
	}
	c := &Connector{
		pool:         pool,
		prefix:       cfg.RolePrefix,
		groups:       slices.Sorted(slices.Values(cfg.Groups)),
		createGroups: cfg.CreateGroups,
		pageSize:     cfg.PageSize,
	}
	if c.pageSize == 0 {
		c.pageSize = defaultPageSize
	}
	return c, nil
}

// Close closes the pool.
func (c *Connector) Close() error {
	c.pool.Close()
	return nil
}

// roleName returns the role for username, or a Permanent error if it cannot be one.
func (c *Connector) roleName(username string) (string, error) {
	if !usernameRE.MatchString(username) {
		return "", connector.Permanent(fmt.Errorf("username %q must be 1 or more of [a-z0-9._-]", username))
	}
	role := c.prefix + username
	if len(role) > maxRoleLen {
		return "", connector.Permanent(fmt.Errorf("role name %q is longer than PostgreSQL's %d bytes", role, maxRoleLen))
	}
	return role, nil
}

// accountColumns reads an account from pg_roles r. $1 is the configured groups, so
// memberships in anything else (a DBA's ad-hoc grant) are not reported as entitlements.
// DISTINCT because from PostgreSQL 16 on a membership can be granted by several grantors.
const accountColumns = `r.oid, r.rolname::text, r.rolcanlogin,
	coalesce(shobj_description(r.oid, 'pg_authid'), ''),
	array(SELECT DISTINCT g.rolname::text
	      FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
	      WHERE m.member = r.oid AND g.rolname = ANY($1::text[])
	      ORDER BY 1)`

// comment is what a managed role's COMMENT holds.
type comment struct {
	ManagedBy   string `json:"managed_by"`
	WorkerID    string `json:"worker_id,omitempty"`
	Email       string `json:"email,omitempty"`
	DisplayName string `json:"display_name,omitempty"`
}

// role is a managed role as read from the catalog.
type role struct {
	oid  uint32
	name string
}

func (c *Connector) scanAccount(row pgx.Row) (connector.Account, role, error) {
	var (
		r        role
		canLogin bool
		desc     string
		groups   []string
	)
	if err := row.Scan(&r.oid, &r.name, &canLogin, &desc, &groups); err != nil {
		return connector.Account{}, role{}, err
	}
	acc := connector.Account{
		ID:           strconv.FormatUint(uint64(r.oid), 10),
		Username:     strings.TrimPrefix(r.name, c.prefix),
		State:        connector.StateDisabled,
		Entitlements: groups,
	}
	if canLogin {
		acc.State = connector.StateEnabled
	}
	// Roles created outside tenure have other comments or none; that is not an error.
	var cm comment
	if json.Unmarshal([]byte(desc), &cm) == nil {
		acc.Email, acc.DisplayName = cm.Email, cm.DisplayName
	}
	return acc, r, nil
}

// lookup reads the managed role ref names: by OID when ref.ID is set, else by username.
func (c *Connector) lookup(ctx context.Context, ref connector.AccountRef) (connector.Account, role, error) {
	var row pgx.Row
	switch {
	case ref.ID != "":
		oid, err := strconv.ParseUint(ref.ID, 10, 32)
		if err != nil {
			return connector.Account{}, role{}, connector.Permanent(fmt.Errorf("account id %q is not a role OID", ref.ID))
		}
		// The prefix check keeps an OID from reaching a role this connector does not own.
		row = c.pool.QueryRow(ctx, `SELECT `+accountColumns+` FROM pg_roles r
			WHERE r.oid = $2 AND starts_with(r.rolname, $3)`, c.groups, uint32(oid), c.prefix)
	case ref.Username != "":
		name, err := c.roleName(ref.Username)
		if err != nil {
			return connector.Account{}, role{}, err
		}
		row = c.pool.QueryRow(ctx, `SELECT `+accountColumns+` FROM pg_roles r
			WHERE r.rolname = $2`, c.groups, name)
	default:
		return connector.Account{}, role{}, connector.Permanent(errors.New("empty account reference"))
	}
	acc, r, err := c.scanAccount(row)
	if errors.Is(err, pgx.ErrNoRows) {
		return connector.Account{}, role{}, connector.NotFound(fmt.Errorf("%w: %s", connector.ErrNotFound, describe(ref, c.prefix)))
	}
	if err != nil {
		return connector.Account{}, role{}, classify(err)
	}
	return acc, r, nil
}

func describe(ref connector.AccountRef, prefix string) string {
	if ref.ID != "" {
		return fmt.Sprintf("no role with OID %s under prefix %q", ref.ID, prefix)
	}
	return fmt.Sprintf("role %q does not exist", prefix+ref.Username)
}

// GetAccount reads the role.
func (c *Connector) GetAccount(ctx context.Context, ref connector.AccountRef) (connector.Account, error) {
	acc, _, err := c.lookup(ctx, ref)
	return acc, err
}

// CreateAccount creates a LOGIN role with the spec's groups, or returns the existing role
// unchanged.
func (c *Connector) CreateAccount(ctx context.Context, spec connector.AccountSpec) (connector.Account, error) {
	name, err := c.roleName(spec.Username)
	if err != nil {
		return connector.Account{}, err
	}
	for _, g := range spec.Entitlements {
		if err := c.checkGroup(g); err != nil {
			return connector.Account{}, err
		}
	}
	ref := connector.AccountRef{Username: spec.Username}
	acc, err := c.GetAccount(ctx, ref)
	if err == nil || !errors.Is(err, connector.ErrNotFound) {
		return acc, err
	}
	if len(spec.Entitlements) > 0 {
		if err := c.ensureGroups(ctx); err != nil {
			return connector.Account{}, err
		}
	}
	cm, err := json.Marshal(comment{ManagedBy: "tenure", WorkerID: spec.WorkerID, Email: spec.Email, DisplayName: spec.DisplayName})
	if err != nil {
		return connector.Account{}, connector.Permanent(err)
	}
	// One transaction, so a role never exists without its comment and initial groups.
	err = pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		ident := pgx.Identifier{name}.Sanitize()
		// The NO… options are the defaults; spelling them out keeps a changed default from
		// handing a workforce account more than a login.
		if _, err := tx.Exec(ctx, `CREATE ROLE `+ident+
			` LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS`); err != nil {
			return err
		}
		// Utility statements take no parameters, so the comment is quoted here.
		lit, err := tx.Conn().PgConn().EscapeString(string(cm))
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `COMMENT ON ROLE `+ident+` IS '`+lit+`'`); err != nil {
			return err
		}
		for _, g := range spec.Entitlements {
			if _, err := tx.Exec(ctx, `GRANT `+pgx.Identifier{g}.Sanitize()+` TO `+ident); err != nil {
				return c.groupError(g, err)
			}
		}
		return nil
	})
	if err != nil && !isCode(err, "42710") { // duplicate_object: a concurrent create won
		return connector.Account{}, classify(err)
	}
	return c.GetAccount(ctx, ref)
}

// DisableAccount sets NOLOGIN, then ends the role's sessions. The order matters: ending
// sessions first would let a client reconnect in between.
func (c *Connector) DisableAccount(ctx context.Context, ref connector.AccountRef) error {
	_, r, err := c.lookup(ctx, ref)
	if err != nil {
		return err
	}
	if err := c.alter(ctx, r, "NOLOGIN"); err != nil {
		return err
	}
	return c.terminate(ctx, r)
}

// EnableAccount sets LOGIN.
func (c *Connector) EnableAccount(ctx context.Context, ref connector.AccountRef) error {
	_, r, err := c.lookup(ctx, ref)
	if err != nil {
		return err
	}
	return c.alter(ctx, r, "LOGIN")
}

// RevokeSessions terminates the role's backends without changing whether it may log in.
func (c *Connector) RevokeSessions(ctx context.Context, ref connector.AccountRef) error {
	_, r, err := c.lookup(ctx, ref)
	if err != nil {
		return err
	}
	return c.terminate(ctx, r)
}

// RevokeCredentials removes the role's password (ALTER ROLE … PASSWORD NULL): password
// authentication (scram-sha-256, md5, password in pg_hba.conf) then always fails for it.
// Removing an absent password succeeds.
func (c *Connector) RevokeCredentials(ctx context.Context, ref connector.AccountRef) error {
	_, r, err := c.lookup(ctx, ref)
	if err != nil {
		return err
	}
	return c.alter(ctx, r, "PASSWORD NULL")
}

// DeleteAccount disables the role, ends its sessions and drops it; dropping a role also
// removes its group memberships. A role that owns objects or holds privileges cannot be
// dropped: that is a Permanent error and the role stays disabled until a DBA reassigns or
// drops what it owns (REASSIGN OWNED / DROP OWNED), which tenure does not decide for them.
func (c *Connector) DeleteAccount(ctx context.Context, ref connector.AccountRef) error {
	_, r, err := c.lookup(ctx, ref)
	if errors.Is(err, connector.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := c.alter(ctx, r, "NOLOGIN"); err != nil {
		if errors.Is(err, connector.ErrNotFound) {
			return nil
		}
		return err
	}
	if err := c.terminate(ctx, r); err != nil {
		return err
	}
	if _, err := c.pool.Exec(ctx, `DROP ROLE IF EXISTS `+pgx.Identifier{r.name}.Sanitize()); err != nil {
		if isCode(err, "2BP01") { // dependent_objects_still_exist
			return connector.Permanent(fmt.Errorf("role %q owns objects or holds privileges; a DBA must REASSIGN OWNED / DROP OWNED before it can be dropped (it stays NOLOGIN): %w", r.name, err))
		}
		return classify(err)
	}
	return nil
}

// GrantEntitlement grants membership in a configured group.
func (c *Connector) GrantEntitlement(ctx context.Context, ref connector.AccountRef, entitlement string) error {
	return c.membership(ctx, ref, entitlement, `GRANT %s TO %s`)
}

// RevokeEntitlement revokes membership in a configured group. From PostgreSQL 16 on, REVOKE
// only removes grants made by the admin role itself; a membership someone else granted stays,
// and the read-back shows it as drift.
func (c *Connector) RevokeEntitlement(ctx context.Context, ref connector.AccountRef, entitlement string) error {
	return c.membership(ctx, ref, entitlement, `REVOKE %s FROM %s`)
}

func (c *Connector) membership(ctx context.Context, ref connector.AccountRef, group, stmt string) error {
	if err := c.checkGroup(group); err != nil {
		return err
	}
	if err := c.ensureGroups(ctx); err != nil {
		return err
	}
	_, r, err := c.lookup(ctx, ref)
	if err != nil {
		return err
	}
	_, err = c.pool.Exec(ctx, fmt.Sprintf(stmt, pgx.Identifier{group}.Sanitize(), pgx.Identifier{r.name}.Sanitize()))
	if err == nil {
		return nil
	}
	if isCode(err, "42704") {
		// undefined_object names either role; re-read to say which.
		if _, _, lerr := c.lookup(ctx, ref); lerr != nil {
			return lerr
		}
	}
	return c.groupError(group, err)
}

// groupError turns a missing group into a Permanent error instead of ErrNotFound, which
// would claim the account is gone.
func (c *Connector) groupError(group string, err error) error {
	if isCode(err, "42704") {
		return connector.Permanent(fmt.Errorf("group role %q does not exist (set create_groups or create it): %w", group, err))
	}
	return classify(err)
}

func (c *Connector) checkGroup(group string) error {
	if slices.Contains(c.groups, group) {
		return nil
	}
	known := strings.Join(c.groups, ", ")
	if known == "" {
		known = "none configured"
	}
	return connector.Permanent(fmt.Errorf("entitlement %q is not a configured group (groups: %s)", group, known))
}

// ensureGroups creates missing groups once, if configured to. It runs on first use rather
// than in New so that opening a connector changes nothing in the target.
func (c *Connector) ensureGroups(ctx context.Context) error {
	if !c.createGroups || len(c.groups) == 0 {
		return nil
	}
	c.groupsMu.Lock()
	defer c.groupsMu.Unlock()
	if c.groupsReady {
		return nil
	}
	rows, err := c.pool.Query(ctx, `SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1::text[])`, c.groups)
	if err != nil {
		return classify(err)
	}
	existing, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return classify(err)
	}
	for _, g := range c.groups {
		if slices.Contains(existing, g) {
			continue
		}
		_, err := c.pool.Exec(ctx, `CREATE ROLE `+pgx.Identifier{g}.Sanitize()+` NOLOGIN`)
		if err != nil && !isCode(err, "42710") { // another instance created it meanwhile
			return classify(fmt.Errorf("create group role %q: %w", g, err))
		}
	}
	c.groupsReady = true
	return nil
}

func (c *Connector) alter(ctx context.Context, r role, option string) error {
	_, err := c.pool.Exec(ctx, `ALTER ROLE `+pgx.Identifier{r.name}.Sanitize()+` `+option)
	return classify(err)
}

// terminate ends every backend of r and waits for each to exit, so that success means no
// session of the role is left.
func (c *Connector) terminate(ctx context.Context, r role) error {
	var left int
	err := c.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE NOT pg_terminate_backend(pid, $2))
		FROM pg_stat_activity WHERE usesysid = $1 AND pid <> pg_backend_pid()`,
		r.oid, terminateWait.Milliseconds()).Scan(&left)
	if err != nil {
		return classify(fmt.Errorf("terminate sessions of role %q: %w", r.name, err))
	}
	if left > 0 {
		return connector.Retryable(fmt.Errorf("%d sessions of role %q still running %v after termination", left, r.name, terminateWait))
	}
	return nil
}

// ListAccounts lists the roles under the prefix in name order. The page token is the last
// role name of the previous page, so pages stay consistent while roles come and go.
func (c *Connector) ListAccounts(ctx context.Context, pageToken string) ([]connector.Account, string, error) {
	if pageToken != "" && !strings.HasPrefix(pageToken, c.prefix) {
		return nil, "", connector.Permanent(fmt.Errorf("invalid page token %q", pageToken))
	}
	// rolname is of type name, which compares with the C collation, so > and ORDER BY agree.
	rows, err := c.pool.Query(ctx, `SELECT `+accountColumns+` FROM pg_roles r
		WHERE starts_with(r.rolname, $2) AND r.rolname > $3
		ORDER BY r.rolname LIMIT $4`, c.groups, c.prefix, pageToken, c.pageSize+1)
	if err != nil {
		return nil, "", classify(err)
	}
	defer rows.Close()
	var (
		accs  []connector.Account
		names []string
	)
	for rows.Next() {
		acc, r, err := c.scanAccount(rows)
		if err != nil {
			return nil, "", classify(err)
		}
		accs = append(accs, acc)
		names = append(names, r.name)
	}
	if err := rows.Err(); err != nil {
		return nil, "", classify(err)
	}
	if len(accs) <= c.pageSize {
		return accs, "", nil
	}
	return accs[:c.pageSize], names[c.pageSize-1], nil
}

func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// classify maps PostgreSQL errors onto connector error kinds: failures to reach or use the
// server are retryable, errors in what was asked are permanent, and an undefined role means
// the account is gone.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var ce *connector.Error
	if errors.As(err, &ce) {
		return err
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return connector.Retryable(err)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return connector.Retryable(err) // network, timeout, context: try again
	}
	code := pgErr.Code
	switch {
	case code == "42704": // undefined_object: our statements only name roles
		return connector.NotFound(err)
	case strings.HasPrefix(code, "08"), // connection exception
		strings.HasPrefix(code, "40"), // serialization failure, deadlock
		strings.HasPrefix(code, "53"), // insufficient resources
		strings.HasPrefix(code, "57"), // operator intervention: shutdown, cannot connect now
		strings.HasPrefix(code, "58"), // system error
		code == "55P03":               // lock not available
		return connector.Retryable(err)
	case strings.HasPrefix(code, "42"), // syntax error or access rule violation (incl. privileges)
		strings.HasPrefix(code, "22"), // data exception
		strings.HasPrefix(code, "23"), // integrity constraint violation
		strings.HasPrefix(code, "2B"), // dependent privilege descriptors still exist
		strings.HasPrefix(code, "0L"), // invalid grantor
		strings.HasPrefix(code, "0P"): // invalid role specification
		return connector.Permanent(err)
	}
	return connector.Retryable(err)
}
