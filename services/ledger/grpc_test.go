package ledger

import (
	"context"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tenure-dev/tenure/pkg/authn"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

func TestGRPCAuthorization(t *testing.T) {
	s := newService(t, Config{}, newPool(t), nil)
	appendAll(t, s, sampleEntries(t, "g", 9), 9)

	a, err := authn.New([]authn.TokenEntry{
		{Name: "auditor", Roles: []authn.Role{authn.RoleAuditor}, Token: "audit-token"},
		{Name: "security", Roles: []authn.Role{authn.RoleSecurity}, Token: "sec-token"},
		{Name: "approver", Roles: []authn.Role{authn.RoleApprover}, Token: "approve-token"},
		{Name: "admin", Roles: []authn.Role{authn.RoleAdmin}, Token: "admin-token"},
	})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.UnaryInterceptor(a.UnaryInterceptor(s.AuthRules())))
	s.RegisterGRPC(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)

	client := func(token string) ledgerv1.LedgerServiceClient {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if token != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(authn.BearerCredentials{Token: token, Insecure: true}))
		}
		cc, err := grpc.NewClient(lis.Addr().String(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return ledgerv1.NewLedgerServiceClient(cc)
	}
	ctx := context.Background()

	auditor := client("audit-token")
	res, err := auditor.Query(ctx, &ledgerv1.QueryRequest{WorkerId: "w1"})
	if err != nil {
		t.Fatalf("auditor Query: %v", err)
	}
	if len(res.Entries) != 2 || res.Entries[0].Seq != 2 || !strings.Contains(res.Entries[0].PayloadJson, "clinician") {
		t.Fatalf("auditor Query = %v", res.Entries)
	}
	v, err := auditor.Verify(ctx, &ledgerv1.VerifyRequest{})
	if err != nil || !v.Ok || v.EntriesChecked != 9 {
		t.Fatalf("auditor Verify = %v, %v", v, err)
	}
	for _, tok := range []string{"sec-token", "admin-token"} {
		if _, err := client(tok).Verify(ctx, &ledgerv1.VerifyRequest{}); err != nil {
			t.Errorf("%s Verify: %v", tok, err)
		}
	}
	if pk, err := auditor.GetPublicKey(ctx, &ledgerv1.GetPublicKeyRequest{}); err != nil || pk.KeyId != KeyID(s.PublicKey()) {
		t.Errorf("auditor GetPublicKey = %v, %v", pk, err)
	}
	if ev, err := auditor.Evidence(ctx, &ledgerv1.EvidenceRequest{Question: "access"}); err != nil || len(ev.Rows) != 3 {
		t.Errorf("auditor Evidence = %v, %v", ev, err)
	}
	if _, err := auditor.ExportEvidence(ctx, &ledgerv1.ExportEvidenceRequest{}); err != nil {
		t.Errorf("auditor ExportEvidence: %v", err)
	}
	if cps, err := auditor.ListCheckpoints(ctx, &ledgerv1.ListCheckpointsRequest{}); err != nil || len(cps.Checkpoints) != 1 {
		t.Errorf("auditor ListCheckpoints = %v, %v", cps, err)
	}
	if _, err := client("sec-token").Archive(ctx, &ledgerv1.ArchiveRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("security Archive: err %v, want PermissionDenied", err)
	}
	approver := client("approve-token")
	for name, call := range map[string]func() error{
		"Evidence": func() error {
			_, err := approver.Evidence(ctx, &ledgerv1.EvidenceRequest{Question: "access"})
			return err
		},
		"ExportEvidence": func() error { _, err := approver.ExportEvidence(ctx, &ledgerv1.ExportEvidenceRequest{}); return err },
		"GetPublicKey":   func() error { _, err := approver.GetPublicKey(ctx, &ledgerv1.GetPublicKeyRequest{}); return err },
		"Archive":        func() error { _, err := approver.Archive(ctx, &ledgerv1.ArchiveRequest{}); return err },
	} {
		if err := call(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("approver %s: err %v, want PermissionDenied", name, err)
		}
	}
	if _, err := approver.Query(ctx, &ledgerv1.QueryRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("approver Query: err %v, want PermissionDenied", err)
	}
	if _, err := approver.Verify(ctx, &ledgerv1.VerifyRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("approver Verify: err %v, want PermissionDenied", err)
	}
	if _, err := client("").Query(ctx, &ledgerv1.QueryRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("anonymous Query: err %v, want Unauthenticated", err)
	}
	if _, err := client("wrong").Query(ctx, &ledgerv1.QueryRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("unknown token Query: err %v, want Unauthenticated", err)
	}
}
