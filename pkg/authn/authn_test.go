package authn

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func TestInterceptor(t *testing.T) {
	a, err := New([]TokenEntry{
		{Name: "olga", Roles: []Role{RoleOperator}, Token: "op-token"},
		{Name: "audrey", Roles: []Role{RoleAuditor}, TokenSHA256: HashToken("aud-token")},
		{Name: "root", Roles: []Role{RoleAdmin}, Token: "admin-token"},
	})
	if err != nil {
		t.Fatal(err)
	}
	rules := Rules{"/x.v1.S/Case": {RoleOperator}, "/x.v1.S/Query": {RoleAuditor, RoleOperator}}
	ic := a.UnaryInterceptor(rules)
	call := func(method, auth string) (string, codes.Code) {
		ctx := context.Background()
		if auth != "" {
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", auth))
		}
		var who string
		_, err := ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: method}, func(ctx context.Context, req any) (any, error) {
			p, _ := FromContext(ctx)
			who = p.Name
			return nil, nil
		})
		return who, status.Code(err)
	}
	tests := []struct {
		name, method, auth, who string
		code                    codes.Code
	}{
		{"operator allowed", "/x.v1.S/Case", "Bearer op-token", "olga", codes.OK},
		{"auditor denied", "/x.v1.S/Case", "Bearer aud-token", "", codes.PermissionDenied},
		{"auditor by hash", "/x.v1.S/Query", "Bearer aud-token", "audrey", codes.OK},
		{"admin anything with a rule", "/x.v1.S/Case", "Bearer admin-token", "root", codes.OK},
		{"no rule denies even admin", "/x.v1.S/Other", "Bearer admin-token", "", codes.PermissionDenied},
		{"no token", "/x.v1.S/Case", "", "", codes.Unauthenticated},
		{"unknown token", "/x.v1.S/Case", "Bearer nope", "", codes.Unauthenticated},
		{"not bearer", "/x.v1.S/Case", "Basic b3A=", "", codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			who, code := call(tt.method, tt.auth)
			if code != tt.code || who != tt.who {
				t.Fatalf("got %v %q, want %v %q", code, who, tt.code, tt.who)
			}
		})
	}
}

func TestLoadRejectsBadFiles(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		"unknown role":  "tokens:\n  - {name: a, roles: [wizard], token: x}\n",
		"unknown field": "tokens:\n  - {name: a, roles: [admin], tokn: x}\n",
		"no token":      "tokens:\n  - {name: a, roles: [admin]}\n",
		"bad hash":      "tokens:\n  - {name: a, roles: [admin], token_sha256: abc}\n",
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
			os.WriteFile(p, []byte(body), 0o600)
			if _, err := Load(p); err == nil || !strings.Contains(err.Error(), p) {
				t.Fatalf("want an error naming %s, got %v", p, err)
			}
		})
	}
}
