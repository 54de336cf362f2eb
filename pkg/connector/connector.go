package connector

import (
	"context"
	"io"
)

// AccountState is what a target says about an account. The host compares it with the desired
// state after every change, so connectors report what they read, never what they assume.
type AccountState int

const (
	// StateUnknown means the connector could not tell; the host treats it as unconfirmed.
	StateUnknown AccountState = iota
	// StateEnabled means the account can sign in.
	StateEnabled
	// StateDisabled means the account exists but cannot sign in.
	StateDisabled
	// StateAbsent means the account does not exist. GetAccount reports absence with
	// ErrNotFound instead; the state exists so hosts can record it.
	StateAbsent
)

func (s AccountState) String() string {
	switch s {
	case StateEnabled:
		return "enabled"
	case StateDisabled:
		return "disabled"
	case StateAbsent:
		return "absent"
	default:
		return "unknown"
	}
}

// Account is an account as read from a target.
type Account struct {
	// ID is the target's stable identifier for the account (an object GUID, a SCIM id, a role
	// OID). Hosts store it in the account link, so it must survive renames where the target
	// allows them.
	ID string
	// Username is the login name, without any connector-specific decoration such as a prefix.
	Username    string
	Email       string
	DisplayName string
	State       AccountState
	// Entitlements are the target-side names of the groups, roles or licences the account
	// holds, restricted to those the connector manages. Order carries no meaning.
	Entitlements []string
}

// AccountRef names an existing account. Hosts pass the ID from the account link when they
// have one, and the username. Connectors use ID when it is set and Username otherwise, so
// a renamed account is still found.
type AccountRef struct {
	ID       string
	Username string
}

// AccountSpec is what a joiner's account should look like.
type AccountSpec struct {
	// WorkerID is tenure's id for the worker. Connectors store it where the target has room
	// (an employee number attribute, a comment) so reconciliation can link accounts back.
	WorkerID    string
	Username    string
	Email       string
	GivenName   string
	FamilyName  string
	DisplayName string
	// Entitlements to grant when the account is created.
	Entitlements []string
}

// Connector is the one thing every connector does: read an account back. Hosts confirm every
// change by reading, so a connector that can only read is still useful (reconciliation,
// manual targets). Everything else is an optional capability interface below, discovered by
// type assertion.
type Connector interface {
	// GetAccount returns the account, or an error matching ErrNotFound when it does not
	// exist.
	GetAccount(ctx context.Context, ref AccountRef) (Account, error)
}

// Creator creates accounts.
type Creator interface {
	// CreateAccount creates the account and grants spec.Entitlements. If an account with
	// spec.Username already exists it returns that account unchanged and no error: a retried
	// task must not fail, and a late joiner event must not re-enable a disabled account.
	CreateAccount(ctx context.Context, spec AccountSpec) (Account, error)
}

// Disabler disables accounts: the leaver's essential operation.
type Disabler interface {
	// DisableAccount stops the account from signing in. Disabling a disabled account
	// succeeds; an absent account gives ErrNotFound. Connectors whose targets keep sessions
	// alive after a disable should also end them here, or implement SessionRevoker.
	DisableAccount(ctx context.Context, ref AccountRef) error
}

// Enabler re-enables accounts (return from leave, rescinded termination).
type Enabler interface {
	// EnableAccount lets the account sign in again. Enabling an enabled account succeeds.
	EnableAccount(ctx context.Context, ref AccountRef) error
}

// Deleter deletes accounts.
type Deleter interface {
	// DeleteAccount removes the account. Deleting an absent account succeeds.
	DeleteAccount(ctx context.Context, ref AccountRef) error
}

// EntitlementGranter grants and revokes entitlements (groups, roles, licences).
type EntitlementGranter interface {
	// GrantEntitlement makes the account hold the entitlement; granting a held one succeeds.
	// An entitlement the connector does not manage is a Permanent error.
	GrantEntitlement(ctx context.Context, ref AccountRef, entitlement string) error
	// RevokeEntitlement removes the entitlement; revoking one not held succeeds.
	RevokeEntitlement(ctx context.Context, ref AccountRef, entitlement string) error
}

// SessionRevoker ends an account's live sessions (and, where the target has them, its
// tokens), because a disabled login alone leaves existing sessions working.
type SessionRevoker interface {
	RevokeSessions(ctx context.Context, ref AccountRef) error
}

// CredentialRevoker invalidates the credentials a target holds for an account: passwords,
// API tokens, SSH or signing keys. A disabled login alone can leave them working (a database
// password used by a script, a personal access token), so the provisioner calls it after a
// leaver's disable, where the connector implements it.
type CredentialRevoker interface {
	// RevokeCredentials makes every credential of the account unusable, so none of them
	// signs in again even if the account is later re-enabled: re-enabling gives no
	// credentials back. Revoking revoked credentials succeeds; an absent account gives
	// ErrNotFound. A target that turns out not to support it (a webhook receiver answering
	// 501) returns an error matching ErrUnsupported, which hosts treat as "nothing revoked",
	// not as a failed disable.
	RevokeCredentials(ctx context.Context, ref AccountRef) error
}

// Lister lists the accounts a connector manages, for reconciliation.
type Lister interface {
	// ListAccounts returns one page. Pass "" for the first page and the returned next token
	// for the following ones; next is "" after the last page. A page may be empty while next
	// is not.
	ListAccounts(ctx context.Context, pageToken string) (accounts []Account, next string, err error)
}

// Capability names, as reported by Capabilities.
const (
	CapCreate       = "create"
	CapDisable      = "disable"
	CapEnable       = "enable"
	CapDelete       = "delete"
	CapEntitlements = "entitlements"
	CapSessions     = "sessions"
	CapList         = "list"
	CapCredentials  = "credentials"
)

// Capabilities lists, for operators and the conformance kit, which optional interfaces c
// implements. "get" is always first since every connector reads.
func Capabilities(c Connector) []string {
	caps := []string{"get"}
	if _, ok := c.(Creator); ok {
		caps = append(caps, CapCreate)
	}
	if _, ok := c.(Disabler); ok {
		caps = append(caps, CapDisable)
	}
	if _, ok := c.(Enabler); ok {
		caps = append(caps, CapEnable)
	}
	if _, ok := c.(Deleter); ok {
		caps = append(caps, CapDelete)
	}
	if _, ok := c.(EntitlementGranter); ok {
		caps = append(caps, CapEntitlements)
	}
	if _, ok := c.(SessionRevoker); ok {
		caps = append(caps, CapSessions)
	}
	if _, ok := c.(Lister); ok {
		caps = append(caps, CapList)
	}
	if _, ok := c.(CredentialRevoker); ok {
		caps = append(caps, CapCredentials)
	}
	return caps
}

// Close releases c's resources if it holds any (it implements io.Closer); otherwise it does
// nothing. Hosts call it for every connector they opened.
func Close(c Connector) error {
	if cl, ok := c.(io.Closer); ok {
		return cl.Close()
	}
	return nil
}
