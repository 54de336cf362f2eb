// Package scim is the "scim" connector: SCIM 2.0 (RFC 7643, RFC 7644) service providers as
// targets, which covers most SaaS applications that offer user provisioning.
//
// An account is a SCIM User; an entitlement is membership in one of the configured SCIM
// Groups. Disabling sets active=false with PATCH, or, when the service provider says it does
// not support PATCH (ServiceProviderConfig patch.supported=false, or a 501 / 405 answer to a
// PATCH), by PUT of the whole resource with active=false.
//
//	connectors:
//	  - name: rostering
//	    type: scim
//	    system: rostering
//	    config:
//	      base_url: https://rostering.example.com/scim/v2
//	      token: {env: TENURE_ROSTERING_SCIM_TOKEN}  # sent as "Authorization: Bearer ..."
//	      timeout: 30s                 # per HTTP request; default 30s
//	      page_size: 100               # users per ListAccounts page; default 100
//	      user_filter_attribute: userName  # attribute holding tenure's username; default userName
//	      groups:                      # entitlements
//	        - entitlement: ward-4      # the name tenure's policy uses
//	          display_name: Ward 4 Nurses  # the SCIM group, found by displayName ...
//	        - entitlement: pharmacy
//	          id: 2819c223-7f76-453a-919d-413861904646  # ... or named by id
//
// An entitlement with neither display_name nor id names the group whose displayName is the
// entitlement itself.
//
// What the connector reads and writes:
//
//   - Account.ID is the SCIM id; the worker id goes into externalId, which RFC 7643 reserves
//     for the provisioning client's identifier, so reconciliation can link accounts back.
//   - Users are found by `<user_filter_attribute> eq "<username>"` (RFC 7644 3.4.2.2, with JSON
//     string escaping). Service providers that do not support filtering are scanned page by
//     page instead. Matching ignores case, as userName is case-insensitive (RFC 7643 4.1.1).
//   - State comes from the user's active attribute; a user without one is StateUnknown,
//     because the connector reports what the target says, not what it assumes.
//   - Entitlements come from the user's groups attribute or, when the service provider does
//     not return one, from the configured groups' members.
//   - Creating a user that exists (found first, or a 409 answer) returns the existing user
//     unchanged.
//   - A PATCH or PUT answered with the resource still showing the old active value is an
//     error: the target said "ok" and did not change. A target that answers 204 and ignores
//     the change is caught by the host's read-back (GetAccount), which reads active again.
//
// HTTP errors map onto connector error kinds: 429 and 503 are retryable after the
// Retry-After the target gave, other 5xx and 408 and network errors are retryable, 404 is
// "not found" for users (and permanent for a configured group that vanished), and every
// other 4xx, including 401 and 403 (a bad or under-privileged token), is permanent. Errors
// name the method, path and the target's detail text; they never contain the token, and
// the connector logs nothing.
//
// The token is resolved on every request, so a rotated token file is used without a restart.
// base_url must be https unless it is a loopback address or allow_insecure_http is set: a
// bearer token and workforce identity data must not cross a network in the clear.
package scim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/tenure-dev/tenure/pkg/connector"
)

// TypeName is the name this connector registers under.
const TypeName = "scim"

func init() {
	connector.Register(TypeName, open)
	connector.RegisterCatalog(TypeName, func(decode func(any) error) ([]string, error) {
		var cfg Config
		if err := decode(&cfg); err != nil {
			return nil, err
		}
		var out []string
		for _, g := range cfg.Groups {
			out = append(out, g.Entitlement)
		}
		return out, nil
	})
}

func open(ctx context.Context, decode func(any) error) (connector.Connector, error) {
	var cfg Config
	if err := decode(&cfg); err != nil {
		return nil, err
	}
	return New(cfg)
}

// Config configures the connector; see the package doc for an example.
type Config struct {
	// BaseURL is the SCIM service root, the URL under which /Users and /Groups live.
	BaseURL string `yaml:"base_url"`
	// Token is the bearer token.
	Token connector.Secret `yaml:"token"`
	// Timeout bounds each HTTP request; default 30s.
	Timeout time.Duration `yaml:"timeout"`
	// PageSize is the count asked for per list page; default 100.
	PageSize int `yaml:"page_size"`
	// UserFilterAttribute is the top-level User attribute holding tenure's username;
	// default userName.
	UserFilterAttribute string `yaml:"user_filter_attribute"`
	// Groups are the SCIM groups usable as entitlements.
	Groups []Group `yaml:"groups"`
	// AllowInsecureHTTP permits an http:// base_url to a host other than loopback.
	AllowInsecureHTTP bool `yaml:"allow_insecure_http"`
}

// Group maps an entitlement name onto a SCIM group.
type Group struct {
	Entitlement string `yaml:"entitlement"`
	// DisplayName finds the group by displayName; default Entitlement.
	DisplayName string `yaml:"display_name"`
	// ID names the group by its SCIM id (no lookup); exclusive with DisplayName.
	ID string `yaml:"id"`
}

const (
	defaultTimeout  = 30 * time.Second
	defaultPageSize = 100
	maxPageSize     = 1000
	// maxScanPages stops a scan of a service provider that ignores startIndex.
	maxScanPages = 10000
)

var attrRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]*$`)

func (c *Config) validate() error {
	var errs []error
	switch u, err := url.Parse(c.BaseURL); {
	case c.BaseURL == "":
		errs = append(errs, errors.New("base_url is required"))
	case err != nil:
		errs = append(errs, errors.New("base_url is not a valid URL"))
	case u.Scheme != "https" && u.Scheme != "http" || u.Host == "":
		errs = append(errs, fmt.Errorf("base_url %q must be an absolute http(s) URL", redactURL(u)))
	case u.User != nil:
		// Credentials in the URL would end up in every error message.
		errs = append(errs, errors.New("base_url must not contain credentials; use token"))
	case u.RawQuery != "" || u.Fragment != "":
		errs = append(errs, fmt.Errorf("base_url %q must not have a query or fragment", redactURL(u)))
	case u.Scheme == "http" && !isLoopback(u.Hostname()) && !c.AllowInsecureHTTP:
		errs = append(errs, fmt.Errorf("base_url %q is plain http: use https (or set allow_insecure_http)", redactURL(u)))
	}
	if c.Token.IsZero() {
		errs = append(errs, errors.New("token is required"))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout %v must not be negative", c.Timeout))
	}
	if c.PageSize < 0 || c.PageSize > maxPageSize {
		errs = append(errs, fmt.Errorf("page_size %d must be between 1 and %d", c.PageSize, maxPageSize))
	}
	switch a := c.UserFilterAttribute; {
	case a == "":
	case strings.EqualFold(a, "externalId"):
		errs = append(errs, errors.New("user_filter_attribute externalId holds tenure's worker id, not the username"))
	case strings.EqualFold(a, "id"):
		errs = append(errs, errors.New("user_filter_attribute id is assigned by the service provider, not a username"))
	case !attrRE.MatchString(a):
		errs = append(errs, fmt.Errorf("user_filter_attribute %q must be a top-level User attribute name", a))
	}
	seen := map[string]bool{}
	for i, g := range c.Groups {
		switch {
		case g.Entitlement == "":
			errs = append(errs, fmt.Errorf("groups[%d]: entitlement is required", i))
		case seen[g.Entitlement]:
			errs = append(errs, fmt.Errorf("group entitlement %q is listed twice", g.Entitlement))
		case g.ID != "" && g.DisplayName != "":
			errs = append(errs, fmt.Errorf("group %q: give display_name or id, not both", g.Entitlement))
		}
		seen[g.Entitlement] = true
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

func redactURL(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

// Connector manages the users of one SCIM service provider.
type Connector struct {
	c          *client
	pageSize   int
	userAttr   string
	groups     []Group // in config order
	entByGroup map[string]string

	mu         sync.Mutex
	discovered bool
	noPatch    bool // patch.supported=false, or a PATCH was answered 501/405
	noFilter   bool
	groupIDs   map[string]string // entitlement -> SCIM group id, as resolved
}

var (
	_ connector.Connector          = (*Connector)(nil)
	_ connector.Creator            = (*Connector)(nil)
	_ connector.Disabler           = (*Connector)(nil)
	_ connector.Enabler            = (*Connector)(nil)
	_ connector.Deleter            = (*Connector)(nil)
	_ connector.EntitlementGranter = (*Connector)(nil)
	_ connector.Lister             = (*Connector)(nil)
)

// New validates cfg and builds the HTTP client. It does not contact the service provider:
// discovery happens on first use, so a target that is down at start-up shows up as
// retryable errors, not as a host that cannot start.
func New(cfg Config) (*Connector, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if _, err := cfg.Token.Resolve(); err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	base, _ := url.Parse(strings.TrimSuffix(cfg.BaseURL, "/"))
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = defaultTimeout
	}
	tokenSecret := cfg.Token
	c := &Connector{
		c: &client{
			base: base,
			http: &http.Client{
				// Its own transport, so Close drops only this connector's connections.
				Transport: connector.HTTPTransport(),
				Timeout:   timeout,
				// A redirect would resend the token to wherever it points; SCIM APIs do not
				// redirect, so one is an error to look at.
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			},
			auth: tokenSecret.Resolve,
		},
		pageSize:   cfg.PageSize,
		userAttr:   cfg.UserFilterAttribute,
		groups:     slices.Clone(cfg.Groups),
		entByGroup: map[string]string{},
		groupIDs:   map[string]string{},
	}
	if c.pageSize == 0 {
		c.pageSize = defaultPageSize
	}
	if c.userAttr == "" {
		c.userAttr = "userName"
	}
	for _, g := range c.groups {
		if g.ID != "" {
			c.groupIDs[g.Entitlement] = g.ID
		}
	}
	return c, nil
}

// Close drops idle connections to the service provider.
func (c *Connector) Close() error {
	c.c.http.CloseIdleConnections()
	return nil
}

// discover reads /ServiceProviderConfig once. A service provider without one (it is
// required, but not everyone has it) is assumed to support PATCH and filtering; the
// fallbacks on 501/405 cover a wrong guess.
func (c *Connector) discover(ctx context.Context) error {
	c.mu.Lock()
	done := c.discovered
	c.mu.Unlock()
	if done {
		return nil
	}
	var spc struct {
		Patch  struct{ Supported bool } `json:"patch"`
		Filter struct{ Supported bool } `json:"filter"`
	}
	err := c.c.do(ctx, http.MethodGet, "ServiceProviderConfig", nil, nil, &spc)
	switch {
	case err == nil:
	case statusOf(err) == http.StatusNotFound:
		spc.Patch.Supported, spc.Filter.Supported = true, true
	default:
		return fmt.Errorf("discover service provider: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.discovered {
		c.discovered = true
		c.noPatch = c.noPatch || !spc.Patch.Supported
		c.noFilter = !spc.Filter.Supported
	}
	return nil
}

func (c *Connector) patchSupported() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.noPatch
}

// patchRefused records that the service provider refused a PATCH, so later calls go
// straight to PUT.
func (c *Connector) patchRefused(err error) bool {
	if s := statusOf(err); s == http.StatusNotImplemented || s == http.StatusMethodNotAllowed {
		c.mu.Lock()
		c.noPatch = true
		c.mu.Unlock()
		return true
	}
	return false
}

// user is a SCIM User as read. raw keeps every attribute, for PUT and for the username
// attribute when it is not userName.
type user struct {
	raw map[string]json.RawMessage
	userFields
}

// userFields are the attributes the connector reads. encoding/json matches names without
// regard to case, as SCIM attribute names are (RFC 7643 2.1).
type userFields struct {
	ID          string `json:"id"`
	UserName    string `json:"userName"`
	DisplayName string `json:"displayName"`
	Name        struct {
		Formatted string `json:"formatted"`
	} `json:"name"`
	Emails []struct {
		Value   string `json:"value"`
		Primary bool   `json:"primary"`
	} `json:"emails"`
	Active *bool `json:"active"`
	// Groups is nil when the service provider did not return the attribute.
	Groups *[]valueRef `json:"groups"`
}

type valueRef struct {
	Value string `json:"value"`
}

func (u *user) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &u.raw); err != nil {
		return err
	}
	return json.Unmarshal(b, &u.userFields)
}

// attr returns a top-level string attribute, matching its name without regard to case.
func (u *user) attr(name string) string {
	for k, v := range u.raw {
		if strings.EqualFold(k, name) {
			var s string
			if json.Unmarshal(v, &s) == nil {
				return s
			}
		}
	}
	return ""
}

func (c *Connector) username(u *user) string {
	if s := u.attr(c.userAttr); s != "" {
		return s
	}
	return u.UserName
}

type listResponse[T any] struct {
	TotalResults int `json:"totalResults"`
	StartIndex   int `json:"startIndex"`
	Resources    []T `json:"Resources"`
}

// find reads the user ref names: by id when ref.ID is set, else by username.
func (c *Connector) find(ctx context.Context, ref connector.AccountRef) (*user, error) {
	if err := c.discover(ctx); err != nil {
		return nil, err
	}
	switch {
	case ref.ID != "":
		var u user
		err := c.c.do(ctx, http.MethodGet, "Users/"+url.PathEscape(ref.ID), nil, nil, &u)
		if errors.Is(err, connector.ErrNotFound) {
			return nil, connector.NotFound(fmt.Errorf("%w: no SCIM user with id %q", connector.ErrNotFound, ref.ID))
		}
		if err != nil {
			return nil, err
		}
		return &u, nil
	case ref.Username != "":
		if err := checkUsername(ref.Username); err != nil {
			return nil, err
		}
		return c.findByUsername(ctx, ref.Username)
	default:
		return nil, connector.Permanent(errors.New("empty account reference"))
	}
}

func checkUsername(s string) error {
	if s == "" || strings.TrimSpace(s) != s || strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return connector.Permanent(fmt.Errorf("username %q must be non-empty, without surrounding space or control characters", s))
	}
	return nil
}

func (c *Connector) findByUsername(ctx context.Context, name string) (*user, error) {
	c.mu.Lock()
	noFilter := c.noFilter
	c.mu.Unlock()
	var matches []*user
	if !noFilter {
		q := url.Values{"filter": {eqFilter(c.userAttr, name)}}
		var lr listResponse[user]
		err := c.c.do(ctx, http.MethodGet, "Users", q, nil, &lr)
		switch {
		case err == nil:
			for i := range lr.Resources {
				// The filter may be looser than wanted (case, or a server that ignores it).
				if strings.EqualFold(c.username(&lr.Resources[i]), name) {
					matches = append(matches, &lr.Resources[i])
				}
			}
			// Some servers compare an escaped value without unescaping it. A wrong "not
			// found" could pass for a finished leaver, so confirm it by scanning, which only
			// usernames with quotes, backslashes or control characters ever pay for.
			noFilter = len(matches) == 0 && filterString(name) != `"`+name+`"`
		case scimTypeOf(err) == "invalidFilter":
			// Some filter parsers choke on escaped quotes or backslashes that RFC 7644
			// allows; scanning finds the user anyway.
			noFilter = true
		case errors.Is(err, connector.ErrNotFound):
			// A 404 on the collection is not an absent user.
			return nil, connector.Permanent(err)
		default:
			return nil, err
		}
	}
	if noFilter {
		// Scan every page. Slow on a big tenant, but correct, and only for service providers
		// that cannot filter (or cannot filter this value).
		for start, pages := 1, 0; ; pages++ {
			if pages == maxScanPages {
				return nil, connector.Permanent(fmt.Errorf("scim: looking for %s %q: still scanning after %d pages of /Users", c.userAttr, name, pages))
			}
			page, next, err := c.listPage(ctx, start)
			if err != nil {
				return nil, err
			}
			for i := range page {
				if strings.EqualFold(c.username(&page[i]), name) {
					matches = append(matches, &page[i])
				}
			}
			if next == 0 {
				break
			}
			start = next
		}
	}
	if len(matches) > 1 {
		// Prefer the exact spelling; several users differing only in case is the target's
		// problem to sort out, not tenure's to guess.
		var exact []*user
		for _, u := range matches {
			if c.username(u) == name {
				exact = append(exact, u)
			}
		}
		if len(exact) != 1 {
			return nil, connector.Permanent(fmt.Errorf("%d SCIM users have %s %q", len(matches), c.userAttr, name))
		}
		matches = exact
	}
	if len(matches) == 0 {
		return nil, connector.NotFound(fmt.Errorf("%w: no SCIM user with %s %q", connector.ErrNotFound, c.userAttr, name))
	}
	return matches[0], nil
}

// account converts a user. groupsOf gives the entitlements.
func (c *Connector) account(u *user, ents []string) connector.Account {
	acc := connector.Account{
		ID:           u.ID,
		Username:     c.username(u),
		DisplayName:  u.DisplayName,
		State:        connector.StateUnknown,
		Entitlements: ents,
	}
	if acc.DisplayName == "" {
		acc.DisplayName = u.Name.Formatted
	}
	for _, e := range u.Emails {
		if e.Primary || acc.Email == "" {
			acc.Email = e.Value
		}
		if e.Primary {
			break
		}
	}
	if u.Active != nil {
		acc.State = connector.StateDisabled
		if *u.Active {
			acc.State = connector.StateEnabled
		}
	}
	return acc
}

// resolvedGroups returns entitlement -> group id for every configured group that can be
// found. Reads use it and tolerate a missing group (it is then simply not held), because a
// misconfigured group must not stop a leaver's disable from being confirmed.
func (c *Connector) resolvedGroups(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	for _, g := range c.groups {
		id, err := c.groupID(ctx, g.Entitlement)
		if err != nil {
			if connector.KindOf(err) == connector.KindPermanent {
				continue
			}
			return nil, err
		}
		out[g.Entitlement] = id
	}
	return out, nil
}

// groupID resolves an entitlement to its group id. A group that does not exist, or a
// displayName shared by several groups, is a Permanent error: an operator must fix the
// configuration or the target.
func (c *Connector) groupID(ctx context.Context, entitlement string) (string, error) {
	i := slices.IndexFunc(c.groups, func(g Group) bool { return g.Entitlement == entitlement })
	if i < 0 {
		known := make([]string, len(c.groups))
		for i, g := range c.groups {
			known[i] = g.Entitlement
		}
		list := strings.Join(known, ", ")
		if list == "" {
			list = "none configured"
		}
		return "", connector.Permanent(fmt.Errorf("entitlement %q is not a configured group (groups: %s)", entitlement, list))
	}
	if err := c.discover(ctx); err != nil {
		return "", err
	}
	c.mu.Lock()
	id, ok := c.groupIDs[entitlement]
	noFilter := c.noFilter
	c.mu.Unlock()
	if ok {
		return id, nil
	}
	name := c.groups[i].DisplayName
	if name == "" {
		name = entitlement
	}
	type group struct {
		ID          string `json:"id"`
		DisplayName string `json:"displayName"`
	}
	var found []group
	if noFilter {
		for start, pages := 1, 0; pages < maxScanPages; pages++ {
			var lr listResponse[group]
			q := url.Values{"startIndex": {strconv.Itoa(start)}, "count": {strconv.Itoa(c.pageSize)}, "attributes": {"displayName"}}
			if err := c.c.do(ctx, http.MethodGet, "Groups", q, nil, &lr); err != nil {
				return "", groupErr(err)
			}
			for _, g := range lr.Resources {
				if g.DisplayName == name {
					found = append(found, g)
				}
			}
			start += len(lr.Resources)
			if len(lr.Resources) == 0 || lr.TotalResults > 0 && start > lr.TotalResults ||
				lr.TotalResults == 0 && len(lr.Resources) < c.pageSize {
				break
			}
		}
	} else {
		var lr listResponse[group]
		// attributes=displayName keeps a big group's members out of the answer; id is
		// always returned.
		q := url.Values{"filter": {eqFilter("displayName", name)}, "attributes": {"displayName"}}
		if err := c.c.do(ctx, http.MethodGet, "Groups", q, nil, &lr); err != nil {
			return "", groupErr(err)
		}
		for _, g := range lr.Resources {
			if g.DisplayName == name { // displayName is case-sensitive... mostly; be exact
				found = append(found, g)
			}
		}
	}
	switch len(found) {
	case 0:
		return "", connector.Permanent(fmt.Errorf("entitlement %q: no SCIM group with displayName %q", entitlement, name))
	case 1:
	default:
		return "", connector.Permanent(fmt.Errorf("entitlement %q: %d SCIM groups have displayName %q; name the group by id", entitlement, len(found), name))
	}
	c.mu.Lock()
	c.groupIDs[entitlement] = found[0].ID
	c.mu.Unlock()
	return found[0].ID, nil
}

// groupErr keeps a 404 about a group from reading as "the account does not exist".
func groupErr(err error) error {
	if errors.Is(err, connector.ErrNotFound) {
		return connector.Permanent(err)
	}
	return err
}

// forget drops a cached group id that turned out to be stale.
func (c *Connector) forget(entitlement string) {
	i := slices.IndexFunc(c.groups, func(g Group) bool { return g.Entitlement == entitlement })
	if i >= 0 && c.groups[i].ID != "" {
		return // configured ids are not guesses
	}
	c.mu.Lock()
	delete(c.groupIDs, entitlement)
	c.mu.Unlock()
}

// entitlementsOf lists the configured entitlements u holds.
func (c *Connector) entitlementsOf(ctx context.Context, u *user) ([]string, error) {
	if len(c.groups) == 0 {
		return nil, nil
	}
	ids, err := c.resolvedGroups(ctx)
	if err != nil {
		return nil, err
	}
	var held []string
	if u.Groups != nil {
		for _, g := range c.groups {
			id, ok := ids[g.Entitlement]
			if ok && slices.Contains(*u.Groups, valueRef{Value: id}) {
				held = append(held, g.Entitlement)
			}
		}
		return held, nil
	}
	members, err := c.groupMembers(ctx, ids)
	if err != nil {
		return nil, err
	}
	for _, g := range c.groups {
		if members[g.Entitlement][u.ID] {
			held = append(held, g.Entitlement)
		}
	}
	return held, nil
}

// groupMembers reads the members of the given groups, for service providers whose users
// carry no groups attribute.
func (c *Connector) groupMembers(ctx context.Context, ids map[string]string) (map[string]map[string]bool, error) {
	out := map[string]map[string]bool{}
	for ent, id := range ids {
		var g struct {
			Members []valueRef `json:"members"`
		}
		q := url.Values{"attributes": {"members"}}
		if err := c.c.do(ctx, http.MethodGet, "Groups/"+url.PathEscape(id), q, nil, &g); err != nil {
			if errors.Is(err, connector.ErrNotFound) {
				c.forget(ent)
				continue // a vanished group holds nobody
			}
			return nil, err
		}
		set := map[string]bool{}
		for _, m := range g.Members {
			set[m.Value] = true
		}
		out[ent] = set
	}
	return out, nil
}

// GetAccount reads the user.
func (c *Connector) GetAccount(ctx context.Context, ref connector.AccountRef) (connector.Account, error) {
	u, err := c.find(ctx, ref)
	if err != nil {
		return connector.Account{}, err
	}
	ents, err := c.entitlementsOf(ctx, u)
	if err != nil {
		return connector.Account{}, err
	}
	return c.account(u, ents), nil
}

// CreateAccount creates the user with the spec's groups, or returns the existing user
// unchanged.
func (c *Connector) CreateAccount(ctx context.Context, spec connector.AccountSpec) (connector.Account, error) {
	if err := checkUsername(spec.Username); err != nil {
		return connector.Account{}, err
	}
	for _, e := range spec.Entitlements {
		if _, err := c.groupID(ctx, e); err != nil {
			return connector.Account{}, err
		}
	}
	ref := connector.AccountRef{Username: spec.Username}
	// Look first: not every service provider enforces userName uniqueness with a 409, and a
	// duplicate account is worse than one more request.
	acc, err := c.GetAccount(ctx, ref)
	if err == nil || !errors.Is(err, connector.ErrNotFound) {
		return acc, err
	}
	body := map[string]any{
		"schemas":  []string{schemaUser},
		"userName": spec.Username,
		"active":   true,
	}
	if !strings.EqualFold(c.userAttr, "userName") {
		body[c.userAttr] = spec.Username
	}
	if spec.WorkerID != "" {
		body["externalId"] = spec.WorkerID
	}
	if spec.DisplayName != "" {
		body["displayName"] = spec.DisplayName
	}
	name := map[string]string{}
	if spec.GivenName != "" {
		name["givenName"] = spec.GivenName
	}
	if spec.FamilyName != "" {
		name["familyName"] = spec.FamilyName
	}
	if f := strings.TrimSpace(spec.GivenName + " " + spec.FamilyName); f != "" {
		name["formatted"] = f
	}
	if len(name) > 0 {
		body["name"] = name
	}
	if spec.Email != "" {
		body["emails"] = []map[string]any{{"value": spec.Email, "type": "work", "primary": true}}
	}
	var created user
	err = c.c.do(ctx, http.MethodPost, "Users", nil, body, &created)
	if statusOf(err) == http.StatusConflict {
		// Someone (a concurrent task, or an earlier try whose answer was lost) created it.
		return c.GetAccount(ctx, ref)
	}
	if err != nil {
		return connector.Account{}, err
	}
	if created.ID == "" {
		// Without an id the user cannot be found again by the link; look it up.
		u, err := c.findByUsername(ctx, spec.Username)
		if err != nil {
			return connector.Account{}, err
		}
		created = *u
	}
	for _, e := range spec.Entitlements {
		if err := c.membership(ctx, &created, e, true); err != nil {
			return connector.Account{}, fmt.Errorf("user %q created, granting %q: %w", spec.Username, e, err)
		}
	}
	return c.GetAccount(ctx, connector.AccountRef{ID: created.ID})
}

// DisableAccount sets active=false.
func (c *Connector) DisableAccount(ctx context.Context, ref connector.AccountRef) error {
	return c.setActive(ctx, ref, false)
}

// EnableAccount sets active=true.
func (c *Connector) EnableAccount(ctx context.Context, ref connector.AccountRef) error {
	return c.setActive(ctx, ref, true)
}

func (c *Connector) setActive(ctx context.Context, ref connector.AccountRef, active bool) error {
	u, err := c.find(ctx, ref)
	if err != nil {
		return err
	}
	if u.Active != nil && *u.Active == active {
		return nil
	}
	path := "Users/" + url.PathEscape(u.ID)
	if c.patchSupported() {
		patch := map[string]any{
			"schemas":    []string{schemaPatchOp},
			"Operations": []map[string]any{{"op": "replace", "path": "active", "value": active}},
		}
		var answer user
		err := c.c.do(ctx, http.MethodPatch, path, nil, patch, &answer)
		if err == nil {
			return checkAnswer("PATCH", path, &answer, active)
		}
		if !c.patchRefused(err) {
			return err
		}
	}
	// PUT replaces the whole resource: send back everything read, minus what the service
	// provider owns (meta, and groups, which is read-only and changed through /Groups).
	body := map[string]json.RawMessage{}
	for k, v := range u.raw {
		switch strings.ToLower(k) {
		case "meta", "groups":
			continue
		}
		body[k] = v
	}
	for k := range body {
		if strings.EqualFold(k, "active") {
			delete(body, k)
		}
	}
	body["active"] = json.RawMessage(strconv.FormatBool(active))
	var answer user
	if err := c.c.do(ctx, http.MethodPut, path, nil, body, &answer); err != nil {
		return err
	}
	return checkAnswer("PUT", path, &answer, active)
}

// checkAnswer catches a service provider that answers 200 with the resource unchanged. An
// answer without the attribute (204, or attributes left out) says nothing either way; the
// host's read-back decides then.
func checkAnswer(method, path string, answer *user, want bool) error {
	if answer.Active == nil || *answer.Active == want {
		return nil
	}
	return connector.Retryable(fmt.Errorf("scim: %s %s answered success but the user is still active=%t: the service provider did not apply the change", method, path, !want))
}

// DeleteAccount deletes the user; an absent user is already deleted.
func (c *Connector) DeleteAccount(ctx context.Context, ref connector.AccountRef) error {
	u, err := c.find(ctx, ref)
	if errors.Is(err, connector.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	err = c.c.do(ctx, http.MethodDelete, "Users/"+url.PathEscape(u.ID), nil, nil, nil)
	if errors.Is(err, connector.ErrNotFound) {
		return nil
	}
	return err
}

// GrantEntitlement adds the user to the entitlement's group.
func (c *Connector) GrantEntitlement(ctx context.Context, ref connector.AccountRef, entitlement string) error {
	return c.changeMembership(ctx, ref, entitlement, true)
}

// RevokeEntitlement removes the user from the entitlement's group.
func (c *Connector) RevokeEntitlement(ctx context.Context, ref connector.AccountRef, entitlement string) error {
	return c.changeMembership(ctx, ref, entitlement, false)
}

func (c *Connector) changeMembership(ctx context.Context, ref connector.AccountRef, entitlement string, add bool) error {
	if _, err := c.groupID(ctx, entitlement); err != nil {
		return err
	}
	u, err := c.find(ctx, ref)
	if err != nil {
		return err
	}
	held, err := c.entitlementsOf(ctx, u)
	if err != nil {
		return err
	}
	if slices.Contains(held, entitlement) == add {
		return nil
	}
	return c.membership(ctx, u, entitlement, add)
}

// membership adds u to or removes u from the entitlement's group: PATCH when the service
// provider supports it, else read-modify-PUT of the group.
func (c *Connector) membership(ctx context.Context, u *user, entitlement string, add bool) error {
	gid, err := c.groupID(ctx, entitlement)
	if err != nil {
		return err
	}
	path := "Groups/" + url.PathEscape(gid)
	if c.patchSupported() {
		op := map[string]any{"op": "add", "path": "members", "value": []map[string]string{{"value": u.ID}}}
		if !add {
			op = map[string]any{"op": "remove", "path": "members[value eq " + filterString(u.ID) + "]"}
		}
		patch := map[string]any{"schemas": []string{schemaPatchOp}, "Operations": []any{op}}
		err := c.c.do(ctx, http.MethodPatch, path, nil, patch, nil)
		switch {
		case err == nil:
			return nil
		case !add && statusOf(err) == http.StatusBadRequest && scimTypeOf(err) == "noTarget":
			return nil // not a member (any more)
		case errors.Is(err, connector.ErrNotFound):
			c.forget(entitlement)
			return connector.Permanent(fmt.Errorf("entitlement %q: group %s is gone: %w", entitlement, gid, err))
		case !c.patchRefused(err):
			return err
		}
	}
	var g map[string]json.RawMessage
	if err := c.c.do(ctx, http.MethodGet, path, nil, nil, &g); err != nil {
		if errors.Is(err, connector.ErrNotFound) {
			c.forget(entitlement)
			return connector.Permanent(fmt.Errorf("entitlement %q: group %s is gone: %w", entitlement, gid, err))
		}
		return err
	}
	var members []map[string]any
	for k, v := range g {
		if strings.EqualFold(k, "members") {
			if err := json.Unmarshal(v, &members); err != nil {
				return connector.Permanent(fmt.Errorf("scim: GET %s: members: %w", path, err))
			}
			delete(g, k)
		}
	}
	members = slices.DeleteFunc(members, func(m map[string]any) bool { return m["value"] == u.ID })
	if add {
		members = append(members, map[string]any{"value": u.ID})
	}
	delete(g, "meta")
	mb, _ := json.Marshal(members)
	g["members"] = mb
	return c.c.do(ctx, http.MethodPut, path, nil, g, nil)
}

func scimTypeOf(err error) string {
	var se *statusError
	if errors.As(err, &se) {
		return se.ScimType
	}
	return ""
}

// listPage reads one page of users from startIndex (1-based). next is the startIndex of the
// following page, or 0 after the last.
func (c *Connector) listPage(ctx context.Context, start int) ([]user, int, error) {
	q := url.Values{"startIndex": {strconv.Itoa(start)}, "count": {strconv.Itoa(c.pageSize)}}
	var lr listResponse[user]
	if err := c.c.do(ctx, http.MethodGet, "Users", q, nil, &lr); err != nil {
		if errors.Is(err, connector.ErrNotFound) {
			return nil, 0, connector.Permanent(err)
		}
		return nil, 0, err
	}
	next := start + len(lr.Resources)
	switch {
	case len(lr.Resources) == 0:
		next = 0
	case lr.TotalResults > 0 && next > lr.TotalResults:
		next = 0
	case lr.TotalResults == 0 && len(lr.Resources) < c.pageSize:
		// totalResults is required, but a server that leaves it out still ends with a short
		// page; stopping at the first page would hide users from reconciliation.
		next = 0
	}
	return lr.Resources, next, nil
}

// ListAccounts lists the service provider's users with startIndex/count paging; the page
// token is the next startIndex. Index paging can skip or repeat a user when users are
// created or deleted between pages; reconciliation runs again on its next schedule.
func (c *Connector) ListAccounts(ctx context.Context, pageToken string) ([]connector.Account, string, error) {
	start := 1
	if pageToken != "" {
		n, err := strconv.Atoi(pageToken)
		if err != nil || n < 1 {
			return nil, "", connector.Permanent(fmt.Errorf("invalid page token %q", pageToken))
		}
		start = n
	}
	if err := c.discover(ctx); err != nil {
		return nil, "", err
	}
	page, next, err := c.listPage(ctx, start)
	if err != nil {
		return nil, "", err
	}
	var members map[string]map[string]bool // read once per page, only if users lack groups
	accs := make([]connector.Account, 0, len(page))
	for i := range page {
		u := &page[i]
		var ents []string
		if len(c.groups) > 0 {
			if u.Groups == nil && members == nil {
				ids, err := c.resolvedGroups(ctx)
				if err != nil {
					return nil, "", err
				}
				if members, err = c.groupMembers(ctx, ids); err != nil {
					return nil, "", err
				}
			}
			if u.Groups == nil {
				for _, g := range c.groups {
					if members[g.Entitlement][u.ID] {
						ents = append(ents, g.Entitlement)
					}
				}
			} else if ents, err = c.entitlementsOf(ctx, u); err != nil {
				return nil, "", err
			}
		}
		accs = append(accs, c.account(u, ents))
	}
	token := ""
	if next > 0 {
		token = strconv.Itoa(next)
	}
	return accs, token, nil
}
