package plugin

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tenure-dev/tenure/pkg/connector"
	connectorv1 "github.com/tenure-dev/tenure/proto/tenure/connector/v1"
)

// service serves one connector as ConnectorService. It only translates: the connector keeps
// the semantics, the host keeps retries.
type service struct {
	connectorv1.UnimplementedConnectorServiceServer
	c connector.Connector
}

var _ connectorv1.ConnectorServiceServer = (*service)(nil)

// lacks answers a call for a capability the connector does not implement.
func lacks(capability string) error {
	return status.Error(codes.Unimplemented, fmt.Errorf("%w: the connector has no %s capability", connector.ErrUnsupported, capability).Error())
}

func (s *service) Describe(ctx context.Context, _ *connectorv1.DescribeRequest) (*connectorv1.DescribeResponse, error) {
	return &connectorv1.DescribeResponse{Capabilities: capsToProto(capsOf(s.c))}, nil
}

func (s *service) GetAccount(ctx context.Context, req *connectorv1.GetAccountRequest) (*connectorv1.GetAccountResponse, error) {
	a, err := s.c.GetAccount(ctx, refFromProto(req.GetRef()))
	if err != nil {
		return nil, toStatus(err)
	}
	return &connectorv1.GetAccountResponse{Account: accountToProto(a)}, nil
}

func (s *service) CreateAccount(ctx context.Context, req *connectorv1.CreateAccountRequest) (*connectorv1.CreateAccountResponse, error) {
	c, ok := s.c.(connector.Creator)
	if !ok {
		return nil, lacks(connector.CapCreate)
	}
	a, err := c.CreateAccount(ctx, specFromProto(req.GetSpec()))
	if err != nil {
		return nil, toStatus(err)
	}
	return &connectorv1.CreateAccountResponse{Account: accountToProto(a)}, nil
}

func (s *service) DisableAccount(ctx context.Context, req *connectorv1.DisableAccountRequest) (*connectorv1.DisableAccountResponse, error) {
	d, ok := s.c.(connector.Disabler)
	if !ok {
		return nil, lacks(connector.CapDisable)
	}
	if err := d.DisableAccount(ctx, refFromProto(req.GetRef())); err != nil {
		return nil, toStatus(err)
	}
	return &connectorv1.DisableAccountResponse{}, nil
}

func (s *service) EnableAccount(ctx context.Context, req *connectorv1.EnableAccountRequest) (*connectorv1.EnableAccountResponse, error) {
	e, ok := s.c.(connector.Enabler)
	if !ok {
		return nil, lacks(connector.CapEnable)
	}
	if err := e.EnableAccount(ctx, refFromProto(req.GetRef())); err != nil {
		return nil, toStatus(err)
	}
	return &connectorv1.EnableAccountResponse{}, nil
}

func (s *service) DeleteAccount(ctx context.Context, req *connectorv1.DeleteAccountRequest) (*connectorv1.DeleteAccountResponse, error) {
	d, ok := s.c.(connector.Deleter)
	if !ok {
		return nil, lacks(connector.CapDelete)
	}
	if err := d.DeleteAccount(ctx, refFromProto(req.GetRef())); err != nil {
		return nil, toStatus(err)
	}
	return &connectorv1.DeleteAccountResponse{}, nil
}

func (s *service) GrantEntitlement(ctx context.Context, req *connectorv1.GrantEntitlementRequest) (*connectorv1.GrantEntitlementResponse, error) {
	g, ok := s.c.(connector.EntitlementGranter)
	if !ok {
		return nil, lacks(connector.CapEntitlements)
	}
	if err := g.GrantEntitlement(ctx, refFromProto(req.GetRef()), req.GetEntitlement()); err != nil {
		return nil, toStatus(err)
	}
	return &connectorv1.GrantEntitlementResponse{}, nil
}

func (s *service) RevokeEntitlement(ctx context.Context, req *connectorv1.RevokeEntitlementRequest) (*connectorv1.RevokeEntitlementResponse, error) {
	g, ok := s.c.(connector.EntitlementGranter)
	if !ok {
		return nil, lacks(connector.CapEntitlements)
	}
	if err := g.RevokeEntitlement(ctx, refFromProto(req.GetRef()), req.GetEntitlement()); err != nil {
		return nil, toStatus(err)
	}
	return &connectorv1.RevokeEntitlementResponse{}, nil
}

func (s *service) RevokeSessions(ctx context.Context, req *connectorv1.RevokeSessionsRequest) (*connectorv1.RevokeSessionsResponse, error) {
	r, ok := s.c.(connector.SessionRevoker)
	if !ok {
		return nil, lacks(connector.CapSessions)
	}
	if err := r.RevokeSessions(ctx, refFromProto(req.GetRef())); err != nil {
		return nil, toStatus(err)
	}
	return &connectorv1.RevokeSessionsResponse{}, nil
}

func (s *service) RevokeCredentials(ctx context.Context, req *connectorv1.RevokeCredentialsRequest) (*connectorv1.RevokeCredentialsResponse, error) {
	r, ok := s.c.(connector.CredentialRevoker)
	if !ok {
		return nil, lacks(connector.CapCredentials)
	}
	if err := r.RevokeCredentials(ctx, refFromProto(req.GetRef())); err != nil {
		return nil, toStatus(err)
	}
	return &connectorv1.RevokeCredentialsResponse{}, nil
}

func (s *service) ListAccounts(ctx context.Context, req *connectorv1.ListAccountsRequest) (*connectorv1.ListAccountsResponse, error) {
	l, ok := s.c.(connector.Lister)
	if !ok {
		return nil, lacks(connector.CapList)
	}
	accs, next, err := l.ListAccounts(ctx, req.GetPageToken())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &connectorv1.ListAccountsResponse{NextPageToken: next, Accounts: make([]*connectorv1.Account, len(accs))}
	for i, a := range accs {
		resp.Accounts[i] = accountToProto(a)
	}
	return resp, nil
}
