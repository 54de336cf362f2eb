package intake

import (
	"context"
	"net"
	"net/http"
	"strings"
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

// grpcClients serves the harness's WorkforceService with tokens for each role.
func grpcClients(t *testing.T, h *harness) func(token string) intakev1.WorkforceServiceClient {
	auth, err := authn.New([]authn.TokenEntry{
		{Name: "olga", Roles: []authn.Role{authn.RoleOperator}, Token: "op-token"},
		{Name: "audrey", Roles: []authn.Role{authn.RoleAuditor}, Token: "aud-token"},
		{Name: "ann", Roles: []authn.Role{authn.RoleAdmin}, Token: "admin-token"},
		{Name: "sam", Roles: []authn.Role{authn.RoleSecurity}, Token: "sec-token"},
	})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.UnaryInterceptor(auth.UnaryInterceptor(h.svc.AuthRules())))
	h.svc.RegisterGRPC(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return func(token string) intakev1.WorkforceServiceClient {
		cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithPerRPCCredentials(authn.BearerCredentials{Token: token, Insecure: true}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return intakev1.NewWorkforceServiceClient(cc)
	}
}

func TestListWorkersAndHistoryGRPC(t *testing.T) {
	h := newHarness(t)
	for id, body := range map[string]string{
		"a": `{"type":"hire","worker":{"worker_id":"A1","worker_type":"employee","department":"ICU","manager_id":"M1"}}`,
		"b": `{"type":"hire","worker":{"worker_id":"B1","worker_type":"contractor","department":"ICU","end_date":"2026-12-31","sponsor_id":"M1"}}`,
		"c": `{"type":"hire","worker":{"worker_id":"C1","worker_type":"vendor","department":"IT","end_date":"2027-06-30"}}`,
		"d": `{"type":"hire","worker":{"worker_id":"D1","worker_type":"employee","department":"IT","manager_id":"M1"}}`,
	} {
		if a := h.post(delivery{id: id, secret: acmeSecret, body: body}); a.Status != http.StatusAccepted {
			t.Fatal(a.Raw)
		}
	}
	h.post(delivery{id: "d-term", secret: acmeSecret, body: `{"type":"termination","worker":{"worker_id":"D1"},"reason":"resignation"}`})
	client := grpcClients(t, h)
	ctx := context.Background()
	ids := func(r *intakev1.ListWorkersResponse) string {
		var out []string
		for _, w := range r.GetWorkers() {
			out = append(out, w.GetWorker().GetWorkerId())
		}
		return strings.Join(out, ",")
	}
	cases := []struct {
		name string
		req  *intakev1.ListWorkersRequest
		want string
	}{
		{"all", &intakev1.ListWorkersRequest{}, "A1,B1,C1,D1"},
		{"active", &intakev1.ListWorkersRequest{Status: eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE}, "A1,B1,C1"},
		{"terminated", &intakev1.ListWorkersRequest{Status: eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED}, "D1"},
		{"contractors", &intakev1.ListWorkersRequest{WorkerType: eventsv1.WorkerType_WORKER_TYPE_CONTRACTOR}, "B1"},
		{"department", &intakev1.ListWorkersRequest{Department: "ICU"}, "A1,B1"},
		{"manager", &intakev1.ListWorkersRequest{ManagerId: "M1", Status: eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE}, "A1"},
		{"ending before", &intakev1.ListWorkersRequest{EndingBefore: "2027-01-01"}, "B1"},
	}
	for _, c := range cases {
		r, err := client("aud-token").ListWorkers(ctx, c.req)
		if err != nil || ids(r) != c.want {
			t.Errorf("%s: %v %q, want %q", c.name, err, ids(r), c.want)
		}
	}
	// Paging.
	r, err := client("op-token").ListWorkers(ctx, &intakev1.ListWorkersRequest{PageSize: 3})
	if err != nil || ids(r) != "A1,B1,C1" || r.GetNextPageToken() == "" {
		t.Fatalf("page 1: %v %v", err, r)
	}
	r, err = client("op-token").ListWorkers(ctx, &intakev1.ListWorkersRequest{PageSize: 3, PageToken: r.GetNextPageToken()})
	if err != nil || ids(r) != "D1" || r.GetNextPageToken() != "" {
		t.Fatalf("page 2: %v %v", err, r)
	}
	for _, bad := range []*intakev1.ListWorkersRequest{{EndingBefore: "next year"}, {PageSize: -1}, {PageToken: "!!"}} {
		if _, err := client("op-token").ListWorkers(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v", bad, err)
		}
	}
	hist, err := client("sec-token").GetHistory(ctx, &intakev1.GetHistoryRequest{WorkerId: "D1"})
	if err != nil || len(hist.GetEntries()) != 2 || hist.Entries[1].GetKind() != "leaver" || hist.Entries[1].GetReason() != "resignation" ||
		hist.Entries[1].GetWorker().GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED || hist.Entries[0].GetEventId() != "intake:acme:d" {
		t.Fatalf("history: %v %v", err, hist)
	}
	if _, err := client("op-token").GetHistory(ctx, &intakev1.GetHistoryRequest{WorkerId: "nobody"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown worker: %v", err)
	}
}

func TestReconcileGRPC(t *testing.T) {
	h := newHarness(t)
	seedRegistry(t, h)
	client := grpcClients(t, h)
	ctx := context.Background()
	req := &intakev1.ReconcileRequest{Roster: readTestdata(t, "snapshot/roster.csv"), Format: intakev1.RosterFormat_ROSTER_FORMAT_CSV, DryRun: true}
	// Reconcile can terminate people: operators and admins only.
	for _, tok := range []string{"aud-token", "sec-token"} {
		if _, err := client(tok).Reconcile(ctx, req); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("%s: %v", tok, err)
		}
	}
	dry, err := client("op-token").Reconcile(ctx, req)
	if err != nil || !dry.GetDryRun() || len(dry.GetChanges()) != 5 || h.count("outbox") != 0 || h.count("snapshots") != 0 {
		t.Fatalf("dry run: %v %v", err, dry)
	}
	req.DryRun = false
	res, err := client("admin-token").Reconcile(ctx, req)
	if err != nil || len(res.GetChanges()) != 5 || res.GetChanges()[0].GetEventId() == "" || h.count("outbox") != 5 {
		t.Fatalf("reconcile: %v %v", err, res)
	}
	if !strings.HasPrefix(res.GetChanges()[0].GetEventId(), "intake:snapshot:snapshot:rpc-") {
		t.Fatalf("event id %s", res.GetChanges()[0].GetEventId())
	}
	var actor string
	h.pool.QueryRow(ctx, `SELECT headers->'tenure-actor'->>0 FROM outbox LIMIT 1`).Scan(&actor)
	if actor != "user:ann" {
		t.Fatalf("actor %q", actor)
	}
	if _, err := client("op-token").Reconcile(ctx, &intakev1.ReconcileRequest{Roster: []byte("worker_id,x\n"), Format: intakev1.RosterFormat_ROSTER_FORMAT_CSV}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad roster: %v", err)
	}
	if _, err := client("op-token").Reconcile(ctx, &intakev1.ReconcileRequest{Roster: []byte("{}")}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("no format: %v", err)
	}
}
