package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/tenure-dev/tenure/pkg/connector"
)

// Inventory is the connector: accounts of a small application kept in a JSON file. It can
// create, disable, enable and delete accounts, grant and revoke a fixed set of entitlements,
// and list accounts. It has no sessions to end, so it does not implement SessionRevoker,
// and tenure sees exactly that across the wire.
type Inventory struct {
	store        *store
	entitlements []string
	pageSize     int
}

var (
	_ connector.Creator            = (*Inventory)(nil)
	_ connector.Disabler           = (*Inventory)(nil)
	_ connector.Enabler            = (*Inventory)(nil)
	_ connector.Deleter            = (*Inventory)(nil)
	_ connector.EntitlementGranter = (*Inventory)(nil)
	_ connector.Lister             = (*Inventory)(nil)
)

// NewInventory returns the connector for the file at path, managing the given entitlements.
// It does not touch the file: a target that is not there yet is an empty inventory.
func NewInventory(path string, entitlements []string, pageSize int) (*Inventory, error) {
	if path == "" {
		return nil, errors.New("the inventory file path is empty")
	}
	if pageSize < 1 {
		return nil, fmt.Errorf("page size %d: want at least 1", pageSize)
	}
	for _, e := range entitlements {
		if strings.TrimSpace(e) == "" {
			return nil, errors.New("an entitlement name is empty")
		}
	}
	return &Inventory{store: &store{path: path}, entitlements: entitlements, pageSize: pageSize}, nil
}

// find returns the index of the account ref names: by ID when set, else by username.
func (f *inventoryFile) find(ref connector.AccountRef) (int, error) {
	var i int
	switch {
	case ref.ID != "":
		i = slices.IndexFunc(f.Accounts, func(r record) bool { return r.ID == ref.ID })
	case ref.Username != "":
		i = slices.IndexFunc(f.Accounts, func(r record) bool { return r.Username == ref.Username })
	default:
		return -1, connector.Permanent(errors.New("account reference has neither id nor username"))
	}
	if i < 0 {
		return -1, connector.NotFound(fmt.Errorf("no account with id %q / username %q", ref.ID, ref.Username))
	}
	return i, nil
}

func (r record) account() connector.Account {
	state := connector.StateEnabled
	if r.Disabled {
		state = connector.StateDisabled
	}
	return connector.Account{
		ID:           r.ID,
		Username:     r.Username,
		Email:        r.Email,
		DisplayName:  r.DisplayName,
		State:        state,
		Entitlements: slices.Clone(r.Entitlements),
	}
}

// checkEntitlement makes an entitlement nobody manages a permanent error: no retry can
// create it, so an operator should see it at once.
func (inv *Inventory) checkEntitlement(e string) error {
	if !slices.Contains(inv.entitlements, e) {
		return connector.Permanent(fmt.Errorf("entitlement %q is not managed here (known: %s)", e, strings.Join(inv.entitlements, ", ")))
	}
	return nil
}

// GetAccount implements connector.Connector.
func (inv *Inventory) GetAccount(ctx context.Context, ref connector.AccountRef) (connector.Account, error) {
	f, err := inv.store.load()
	if err != nil {
		return connector.Account{}, err
	}
	i, err := f.find(ref)
	if err != nil {
		return connector.Account{}, err
	}
	return f.Accounts[i].account(), nil
}

// CreateAccount implements connector.Creator. An existing username comes back unchanged,
// disabled or not: a late joiner event must not undo a termination.
func (inv *Inventory) CreateAccount(ctx context.Context, spec connector.AccountSpec) (connector.Account, error) {
	if spec.Username == "" || strings.ContainsFunc(spec.Username, func(r rune) bool { return r <= ' ' }) {
		return connector.Account{}, connector.Permanent(fmt.Errorf("username %q: want a non-empty name without spaces", spec.Username))
	}
	for _, e := range spec.Entitlements {
		if err := inv.checkEntitlement(e); err != nil {
			return connector.Account{}, err
		}
	}
	var out connector.Account
	err := inv.store.update(func(f *inventoryFile) error {
		if i, err := f.find(connector.AccountRef{Username: spec.Username}); err == nil {
			out = f.Accounts[i].account()
			return nil
		}
		r := record{
			ID:           newID(),
			Username:     spec.Username,
			WorkerID:     spec.WorkerID,
			Email:        spec.Email,
			GivenName:    spec.GivenName,
			FamilyName:   spec.FamilyName,
			DisplayName:  spec.DisplayName,
			Entitlements: slices.Compact(slices.Sorted(slices.Values(spec.Entitlements))),
		}
		f.Accounts = append(f.Accounts, r)
		out = r.account()
		return nil
	})
	return out, err
}

// newID returns a random id: it survives renames and never comes back after a delete.
func newID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "inv-" + hex.EncodeToString(b)
}

// change applies fn to the account ref names, under the store's lock.
func (inv *Inventory) change(ref connector.AccountRef, fn func(*record)) error {
	return inv.store.update(func(f *inventoryFile) error {
		i, err := f.find(ref)
		if err != nil {
			return err
		}
		fn(&f.Accounts[i])
		return nil
	})
}

// DisableAccount implements connector.Disabler.
func (inv *Inventory) DisableAccount(ctx context.Context, ref connector.AccountRef) error {
	return inv.change(ref, func(r *record) { r.Disabled = true })
}

// EnableAccount implements connector.Enabler.
func (inv *Inventory) EnableAccount(ctx context.Context, ref connector.AccountRef) error {
	return inv.change(ref, func(r *record) { r.Disabled = false })
}

// DeleteAccount implements connector.Deleter; deleting an absent account succeeds.
func (inv *Inventory) DeleteAccount(ctx context.Context, ref connector.AccountRef) error {
	return inv.store.update(func(f *inventoryFile) error {
		i, err := f.find(ref)
		if connector.KindOf(err) == connector.KindNotFound {
			return nil
		}
		if err != nil {
			return err
		}
		f.Accounts = slices.Delete(f.Accounts, i, i+1)
		return nil
	})
}

// GrantEntitlement implements connector.EntitlementGranter.
func (inv *Inventory) GrantEntitlement(ctx context.Context, ref connector.AccountRef, entitlement string) error {
	if err := inv.checkEntitlement(entitlement); err != nil {
		return err
	}
	return inv.change(ref, func(r *record) {
		if !slices.Contains(r.Entitlements, entitlement) {
			r.Entitlements = slices.Sorted(slices.Values(append(r.Entitlements, entitlement)))
		}
	})
}

// RevokeEntitlement implements connector.EntitlementGranter.
func (inv *Inventory) RevokeEntitlement(ctx context.Context, ref connector.AccountRef, entitlement string) error {
	if err := inv.checkEntitlement(entitlement); err != nil {
		return err
	}
	return inv.change(ref, func(r *record) {
		r.Entitlements = slices.DeleteFunc(r.Entitlements, func(e string) bool { return e == entitlement })
	})
}

// ListAccounts implements connector.Lister. The page token is the last id of the previous
// page, so accounts created or deleted between pages neither repeat nor shift the others.
func (inv *Inventory) ListAccounts(ctx context.Context, pageToken string) ([]connector.Account, string, error) {
	f, err := inv.store.load()
	if err != nil {
		return nil, "", err
	}
	slices.SortFunc(f.Accounts, func(a, b record) int { return strings.Compare(a.ID, b.ID) })
	start, _ := slices.BinarySearchFunc(f.Accounts, pageToken, func(r record, id string) int {
		if r.ID <= id {
			return -1
		}
		return 1
	})
	end := min(start+inv.pageSize, len(f.Accounts))
	page := make([]connector.Account, 0, end-start)
	for _, r := range f.Accounts[start:end] {
		page = append(page, r.account())
	}
	next := ""
	if end < len(f.Accounts) {
		next = f.Accounts[end-1].ID
	}
	return page, next, nil
}
