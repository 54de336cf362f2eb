package intake

import (
	"context"
	"net"
	"net/http"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tenure-dev/tenure/pkg/authn"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

func TestGetWorkerGRPC(t *testing.T) {
	h := newHarness(t)
	if a := h.post(delivery{id: "g1", body: hireBody, secret: acmeSecret}); a.Status != http.StatusAccepted {
		t.Fatalf("hire: %d %s", a.Status, a.Raw)
	}
	auth, err := authn.New([]authn.TokenEntry{
		{Name: "olga", Roles: []authn.Role{authn.RoleOperator}, Token: "op-token"},
		{Name: "audrey", Roles: []authn.Role{authn.RoleAuditor}, Token: "aud-token"},
		{Name: "sam", Roles: []authn.Role{authn.RoleSecurity}, Token: "sec-token"},
		{Name: "nobody", Roles: nil, Token: "no-role-token"},
	})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.UnaryInterceptor(auth.UnaryInterceptor(h.svc.AuthRules())), grpc.StreamInterceptor(auth.StreamInterceptor(h.svc.AuthRules())))
	h.svc.RegisterGRPC(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)

	client := func(token string) intakev1.WorkforceServiceClient {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if token != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(authn.BearerCredentials{Token: token, Insecure: true}))
		}
		cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return intakev1.NewWorkforceServiceClient(cc)
	}
	ctx := context.Background()

	for _, token := range []string{"op-token", "aud-token", "sec-token"} {
		resp, err := client(token).GetWorker(ctx, &intakev1.GetWorkerRequest{WorkerId: "E1001"})
		if err != nil {
			t.Fatalf("%s: %v", token, err)
		}
		w := resp.GetWorker()
		if w.GetEmail() != "ada@example.org" || w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE ||
			resp.GetLastEventId() != "intake:acme:g1" || resp.GetEffectiveTime().AsTime().Format("2006-01-02") != "2025-03-01" || resp.GetUpdatedAt() == nil {
			t.Fatalf("%s: %v", token, resp)
		}
	}
	tests := []struct {
		name, token, id string
		code            codes.Code
	}{
		{"unknown worker", "op-token", "E404", codes.NotFound},
		{"empty id", "op-token", "", codes.InvalidArgument},
		{"no token", "", "E1001", codes.Unauthenticated},
		{"bad token", "nope", "E1001", codes.Unauthenticated},
		{"no role", "no-role-token", "E1001", codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := client(tt.token).GetWorker(ctx, &intakev1.GetWorkerRequest{WorkerId: tt.id})
			if status.Code(err) != tt.code {
				t.Fatalf("got %v, want %v", err, tt.code)
			}
		})
	}
	rules := h.svc.AuthRules()
	if len(rules[intakev1.WorkforceService_GetWorker_FullMethodName]) != 4 {
		t.Fatalf("rules %v", rules)
	}
}
