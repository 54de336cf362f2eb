package plugin

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"

	"github.com/tenure-dev/tenure/pkg/connector"
	connectorv1 "github.com/tenure-dev/tenure/proto/tenure/connector/v1"
)

var errNilConn = errors.New("plugin: NewClient needs a connection")

// ClientOption configures NewClient.
type ClientOption func(*clientOptions)

type clientOptions struct {
	caps     []string
	haveCaps bool
}

// WithCapabilities makes NewClient implement the named capabilities (connector.Cap* names)
// instead of asking the server with Describe, so a host can open the connector while the
// remote process is still down. A capability the server turns out not to have fails each
// call as a permanent connector.ErrUnsupported error.
func WithCapabilities(names ...string) ClientOption {
	return func(o *clientOptions) { o.caps, o.haveCaps = names, true }
}

// NewClient returns a connector that calls the ConnectorService on cc and implements exactly
// the optional capability interfaces the server reports in Describe (or those named by
// WithCapabilities), so the host's type assertions see a remote connector as it would a
// built-in one. Describe waits for cc to connect until ctx ends. The connector's Close
// closes cc; when NewClient fails, cc is the caller's to close.
func NewClient(ctx context.Context, cc *grpc.ClientConn, opts ...ClientOption) (connector.Connector, error) {
	if cc == nil {
		return nil, errNilConn
	}
	var o clientOptions
	for _, opt := range opts {
		opt(&o)
	}
	c := &client{rpc: connectorv1.NewConnectorServiceClient(tracingConn{cc}), cc: cc, target: cc.Target()}
	var caps capSet
	if o.haveCaps {
		var err error
		if caps, err = parseCapabilities(o.caps); err != nil {
			return nil, err
		}
	} else {
		// Waiting for ready lets tenure and a connector started next to it come up in
		// either order.
		resp, err := c.rpc.Describe(ctx, &connectorv1.DescribeRequest{}, grpc.WaitForReady(true))
		if err != nil {
			return nil, fromStatus(ctx, c.target, "Describe", err)
		}
		caps = capsFromProto(resp.GetCapabilities())
	}
	return compose(c, caps), nil
}

//go:generate go run gen_compose.go

// client is the part of every remote connector: reading and closing. The capabilities are
// separate types (creator, disabler, ...) that compose embeds only when the server has them.
type client struct {
	rpc    connectorv1.ConnectorServiceClient
	cc     *grpc.ClientConn
	target string
}

func (c *client) fail(ctx context.Context, method string, err error) error {
	return fromStatus(ctx, c.target, method, err)
}

// GetAccount implements connector.Connector.
func (c *client) GetAccount(ctx context.Context, ref connector.AccountRef) (connector.Account, error) {
	resp, err := c.rpc.GetAccount(ctx, &connectorv1.GetAccountRequest{Ref: refToProto(ref)})
	if err != nil {
		return connector.Account{}, c.fail(ctx, "GetAccount", err)
	}
	if resp.GetAccount() == nil {
		return connector.Account{}, fmt.Errorf("remote connector %s: GetAccount: answer without an account", c.target)
	}
	return accountFromProto(resp.GetAccount()), nil
}

// Close implements io.Closer: it closes the connection.
func (c *client) Close() error { return c.cc.Close() }

type creator struct{ c *client }

func (x creator) CreateAccount(ctx context.Context, spec connector.AccountSpec) (connector.Account, error) {
	resp, err := x.c.rpc.CreateAccount(ctx, &connectorv1.CreateAccountRequest{Spec: specToProto(spec)})
	if err != nil {
		return connector.Account{}, x.c.fail(ctx, "CreateAccount", err)
	}
	if resp.GetAccount() == nil {
		return connector.Account{}, fmt.Errorf("remote connector %s: CreateAccount: answer without an account", x.c.target)
	}
	return accountFromProto(resp.GetAccount()), nil
}

type disabler struct{ c *client }

func (x disabler) DisableAccount(ctx context.Context, ref connector.AccountRef) error {
	_, err := x.c.rpc.DisableAccount(ctx, &connectorv1.DisableAccountRequest{Ref: refToProto(ref)})
	return x.c.fail(ctx, "DisableAccount", err)
}

type enabler struct{ c *client }

func (x enabler) EnableAccount(ctx context.Context, ref connector.AccountRef) error {
	_, err := x.c.rpc.EnableAccount(ctx, &connectorv1.EnableAccountRequest{Ref: refToProto(ref)})
	return x.c.fail(ctx, "EnableAccount", err)
}

type deleter struct{ c *client }

func (x deleter) DeleteAccount(ctx context.Context, ref connector.AccountRef) error {
	_, err := x.c.rpc.DeleteAccount(ctx, &connectorv1.DeleteAccountRequest{Ref: refToProto(ref)})
	return x.c.fail(ctx, "DeleteAccount", err)
}

type entitlementGranter struct{ c *client }

func (x entitlementGranter) GrantEntitlement(ctx context.Context, ref connector.AccountRef, entitlement string) error {
	_, err := x.c.rpc.GrantEntitlement(ctx, &connectorv1.GrantEntitlementRequest{Ref: refToProto(ref), Entitlement: entitlement})
	return x.c.fail(ctx, "GrantEntitlement", err)
}

func (x entitlementGranter) RevokeEntitlement(ctx context.Context, ref connector.AccountRef, entitlement string) error {
	_, err := x.c.rpc.RevokeEntitlement(ctx, &connectorv1.RevokeEntitlementRequest{Ref: refToProto(ref), Entitlement: entitlement})
	return x.c.fail(ctx, "RevokeEntitlement", err)
}

type sessionRevoker struct{ c *client }

func (x sessionRevoker) RevokeSessions(ctx context.Context, ref connector.AccountRef) error {
	_, err := x.c.rpc.RevokeSessions(ctx, &connectorv1.RevokeSessionsRequest{Ref: refToProto(ref)})
	return x.c.fail(ctx, "RevokeSessions", err)
}

type credentialRevoker struct{ c *client }

func (x credentialRevoker) RevokeCredentials(ctx context.Context, ref connector.AccountRef) error {
	_, err := x.c.rpc.RevokeCredentials(ctx, &connectorv1.RevokeCredentialsRequest{Ref: refToProto(ref)})
	return x.c.fail(ctx, "RevokeCredentials", err)
}

type lister struct{ c *client }

func (x lister) ListAccounts(ctx context.Context, pageToken string) ([]connector.Account, string, error) {
	resp, err := x.c.rpc.ListAccounts(ctx, &connectorv1.ListAccountsRequest{PageToken: pageToken})
	if err != nil {
		return nil, "", x.c.fail(ctx, "ListAccounts", err)
	}
	accs := make([]connector.Account, len(resp.GetAccounts()))
	for i, a := range resp.GetAccounts() {
		accs[i] = accountFromProto(a)
	}
	return accs, resp.GetNextPageToken(), nil
}

var (
	_ connector.Creator            = creator{}
	_ connector.Disabler           = disabler{}
	_ connector.Enabler            = enabler{}
	_ connector.Deleter            = deleter{}
	_ connector.EntitlementGranter = entitlementGranter{}
	_ connector.SessionRevoker     = sessionRevoker{}
	_ connector.Lister             = lister{}
	_ connector.CredentialRevoker  = credentialRevoker{}
)
