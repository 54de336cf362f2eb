package connectortest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/tenure-dev/tenure/pkg/connector"
)

// Memory is an in-memory connector with every capability. It passes the suite, so it shows
// the contract in the smallest possible form, and hosts use it in their own tests as a
// target that behaves like a real one. Use NewMemory.
type Memory struct {
	// Inject, if set (before first use), runs before every operation with the operation's
	// capability name (connector.CapDisable, ..., or "get") and the account reference; an
	// error it returns is returned instead of doing the operation. Hosts use it to test
	// retries and failures.
	Inject func(op string, ref connector.AccountRef) error
	// PageSize is the ListAccounts page size; 0 means 100.
	PageSize int

	mu           sync.Mutex
	entitlements []string
	lastID       int
	byID         map[string]*connector.Account
	sessions     map[string]int    // by ID
	credentials  map[string]string // by ID
}

var (
	_ connector.Creator            = (*Memory)(nil)
	_ connector.Disabler           = (*Memory)(nil)
	_ connector.Enabler            = (*Memory)(nil)
	_ connector.Deleter            = (*Memory)(nil)
	_ connector.EntitlementGranter = (*Memory)(nil)
	_ connector.SessionRevoker     = (*Memory)(nil)
	_ connector.Lister             = (*Memory)(nil)
	_ connector.CredentialRevoker  = (*Memory)(nil)
)

// NewMemory returns an empty target that knows the given entitlements.
func NewMemory(entitlements ...string) *Memory {
	return &Memory{
		entitlements: slices.Clone(entitlements),
		byID:         map[string]*connector.Account{},
		sessions:     map[string]int{},
		credentials:  map[string]string{},
	}
}

func (m *Memory) inject(op string, ref connector.AccountRef) error {
	if m.Inject == nil {
		return nil
	}
	return m.Inject(op, ref)
}

// find returns the account ref names; the caller holds mu.
func (m *Memory) find(ref connector.AccountRef) (*connector.Account, error) {
	if ref.ID != "" {
		if a, ok := m.byID[ref.ID]; ok {
			return a, nil
		}
		return nil, connector.NotFound(fmt.Errorf("%w: id %q", connector.ErrNotFound, ref.ID))
	}
	if ref.Username == "" {
		return nil, connector.Permanent(fmt.Errorf("empty account reference"))
	}
	for _, a := range m.byID {
		if a.Username == ref.Username {
			return a, nil
		}
	}
	return nil, connector.NotFound(fmt.Errorf("%w: username %q", connector.ErrNotFound, ref.Username))
}

func snapshot(a *connector.Account) connector.Account {
	c := *a
	c.Entitlements = slices.Clone(a.Entitlements)
	return c
}

// GetAccount implements connector.Connector.
func (m *Memory) GetAccount(ctx context.Context, ref connector.AccountRef) (connector.Account, error) {
	if err := m.inject("get", ref); err != nil {
		return connector.Account{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	a, err := m.find(ref)
	if err != nil {
		return connector.Account{}, err
	}
	return snapshot(a), nil
}

// CreateAccount implements connector.Creator.
func (m *Memory) CreateAccount(ctx context.Context, spec connector.AccountSpec) (connector.Account, error) {
	ref := connector.AccountRef{Username: spec.Username}
	if err := m.inject(connector.CapCreate, ref); err != nil {
		return connector.Account{}, err
	}
	if spec.Username == "" {
		return connector.Account{}, connector.Permanent(fmt.Errorf("username is required"))
	}
	for _, e := range spec.Entitlements {
		if err := m.checkEntitlement(e); err != nil {
			return connector.Account{}, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if a, err := m.find(ref); err == nil {
		return snapshot(a), nil
	}
	m.lastID++
	a := &connector.Account{
		ID:           "m" + strconv.Itoa(m.lastID),
		Username:     spec.Username,
		Email:        spec.Email,
		DisplayName:  spec.DisplayName,
		State:        connector.StateEnabled,
		Entitlements: slices.Compact(slices.Sorted(slices.Values(spec.Entitlements))),
	}
	m.byID[a.ID] = a
	return snapshot(a), nil
}

func (m *Memory) update(op string, ref connector.AccountRef, f func(a *connector.Account)) error {
	if err := m.inject(op, ref); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	a, err := m.find(ref)
	if err != nil {
		return err
	}
	f(a)
	return nil
}

// DisableAccount implements connector.Disabler; it also ends the account's sessions.
func (m *Memory) DisableAccount(ctx context.Context, ref connector.AccountRef) error {
	return m.update(connector.CapDisable, ref, func(a *connector.Account) {
		a.State = connector.StateDisabled
		delete(m.sessions, a.ID)
	})
}

// EnableAccount implements connector.Enabler.
func (m *Memory) EnableAccount(ctx context.Context, ref connector.AccountRef) error {
	return m.update(connector.CapEnable, ref, func(a *connector.Account) { a.State = connector.StateEnabled })
}

// RevokeSessions implements connector.SessionRevoker.
func (m *Memory) RevokeSessions(ctx context.Context, ref connector.AccountRef) error {
	return m.update(connector.CapSessions, ref, func(a *connector.Account) { delete(m.sessions, a.ID) })
}

// RevokeCredentials implements connector.CredentialRevoker: the account's credential (see
// SetCredential) stops working.
func (m *Memory) RevokeCredentials(ctx context.Context, ref connector.AccountRef) error {
	return m.update(connector.CapCredentials, ref, func(a *connector.Account) { delete(m.credentials, a.ID) })
}

// SetCredential gives the account a credential (a password, an API token), as a helpdesk
// or the person would; tenure never sets one.
func (m *Memory) SetCredential(ref connector.AccountRef, secret string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, err := m.find(ref)
	if err != nil {
		return err
	}
	m.credentials[a.ID] = secret
	return nil
}

// Authenticate says whether secret is the account's credential and the account is enabled.
func (m *Memory) Authenticate(ref connector.AccountRef, secret string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, err := m.find(ref)
	if err != nil || a.State != connector.StateEnabled {
		return false
	}
	cred, ok := m.credentials[a.ID]
	return ok && secret != "" && cred == secret
}

// Login opens a session for an enabled account, so tests can check that a disable or a
// session revocation ended it (see Sessions).
func (m *Memory) Login(ref connector.AccountRef) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, err := m.find(ref)
	if err != nil {
		return err
	}
	if a.State != connector.StateEnabled {
		return fmt.Errorf("account %q is disabled", a.Username)
	}
	m.sessions[a.ID]++
	return nil
}

// Sessions returns how many sessions of the account are open.
func (m *Memory) Sessions(ref connector.AccountRef) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, err := m.find(ref)
	if err != nil {
		return 0
	}
	return m.sessions[a.ID]
}

// DeleteAccount implements connector.Deleter.
func (m *Memory) DeleteAccount(ctx context.Context, ref connector.AccountRef) error {
	if err := m.inject(connector.CapDelete, ref); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if a, err := m.find(ref); err == nil {
		delete(m.byID, a.ID)
		delete(m.sessions, a.ID)
		delete(m.credentials, a.ID)
	}
	return nil
}

func (m *Memory) checkEntitlement(e string) error {
	if !slices.Contains(m.entitlements, e) {
		return connector.Permanent(fmt.Errorf("unknown entitlement %q", e))
	}
	return nil
}

// GrantEntitlement implements connector.EntitlementGranter.
func (m *Memory) GrantEntitlement(ctx context.Context, ref connector.AccountRef, e string) error {
	if err := m.checkEntitlement(e); err != nil {
		return err
	}
	return m.update(connector.CapEntitlements, ref, func(a *connector.Account) {
		if !slices.Contains(a.Entitlements, e) {
			a.Entitlements = append(a.Entitlements, e)
			slices.Sort(a.Entitlements)
		}
	})
}

// RevokeEntitlement implements connector.EntitlementGranter.
func (m *Memory) RevokeEntitlement(ctx context.Context, ref connector.AccountRef, e string) error {
	if err := m.checkEntitlement(e); err != nil {
		return err
	}
	return m.update(connector.CapEntitlements, ref, func(a *connector.Account) {
		a.Entitlements = slices.DeleteFunc(a.Entitlements, func(x string) bool { return x == e })
	})
}

// ListAccounts implements connector.Lister, in username order; the token is the last
// username of the previous page.
func (m *Memory) ListAccounts(ctx context.Context, pageToken string) ([]connector.Account, string, error) {
	if err := m.inject(connector.CapList, connector.AccountRef{}); err != nil {
		return nil, "", err
	}
	size := m.PageSize
	if size <= 0 {
		size = 100
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var all []connector.Account
	for _, a := range m.byID {
		if a.Username > pageToken {
			all = append(all, snapshot(a))
		}
	}
	slices.SortFunc(all, func(a, b connector.Account) int { return strings.Compare(a.Username, b.Username) })
	if len(all) <= size {
		return all, "", nil
	}
	return all[:size], all[size-1].Username, nil
}
