// Package authn authenticates gRPC callers by bearer token and authorizes each method by
// role. Unknown tokens are Unauthenticated; methods without a rule are denied.
package authn

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Role is what a principal may do.
type Role string

// Roles.
const (
	RoleOperator Role = "operator"
	RoleApprover Role = "approver"
	RoleAuditor  Role = "auditor"
	RoleSecurity Role = "security"
	RoleAdmin    Role = "admin"
)

var knownRoles = []Role{RoleOperator, RoleApprover, RoleAuditor, RoleSecurity, RoleAdmin}

// Principal is an authenticated caller.
type Principal struct {
	Name  string
	Roles []Role
}

// Has reports whether p holds any of roles (admin holds all).
func (p Principal) Has(roles ...Role) bool {
	if slices.Contains(p.Roles, RoleAdmin) {
		return true
	}
	for _, r := range roles {
		if slices.Contains(p.Roles, r) {
			return true
		}
	}
	return false
}

// TokenEntry is one token in a tokens file. The token is given as its SHA-256 (preferred: the
// file then holds no secret), inline, or by environment variable.
type TokenEntry struct {
	Name        string `yaml:"name"`
	Roles       []Role `yaml:"roles"`
	TokenSHA256 string `yaml:"token_sha256,omitempty"`
	Token       string `yaml:"token,omitempty"`
	TokenEnv    string `yaml:"token_env,omitempty"`
}

// TokensFile is the YAML format: `tokens: [{name, roles, token_sha256|token|token_env}]`.
type TokensFile struct {
	Tokens []TokenEntry `yaml:"tokens"`
}

// Authenticator maps bearer tokens to principals.
type Authenticator struct {
	byHash map[[32]byte]Principal
}

// New builds an authenticator from entries.
func New(entries []TokenEntry) (*Authenticator, error) {
	a := &Authenticator{byHash: map[[32]byte]Principal{}}
	for i, e := range entries {
		where := fmt.Sprintf("tokens[%d] (%s)", i, e.Name)
		if e.Name == "" {
			return nil, fmt.Errorf("authn: %s: name is required", where)
		}
		for _, r := range e.Roles {
			if !slices.Contains(knownRoles, r) {
				return nil, fmt.Errorf("authn: %s: unknown role %q (known: operator, approver, auditor, security, admin)", where, r)
			}
		}
		var h [32]byte
		switch {
		case e.TokenSHA256 != "":
			b, err := hex.DecodeString(e.TokenSHA256)
			if err != nil || len(b) != 32 {
				return nil, fmt.Errorf("authn: %s: token_sha256 must be 64 hex digits", where)
			}
			copy(h[:], b)
		case e.Token != "":
			h = sha256.Sum256([]byte(e.Token))
		case e.TokenEnv != "":
			v := os.Getenv(e.TokenEnv)
			if v == "" {
				return nil, fmt.Errorf("authn: %s: environment variable %s is empty", where, e.TokenEnv)
			}
			h = sha256.Sum256([]byte(v))
		default:
			return nil, fmt.Errorf("authn: %s: one of token_sha256, token, token_env is required", where)
		}
		a.byHash[h] = Principal{Name: e.Name, Roles: e.Roles}
	}
	return a, nil
}

// Load reads a tokens file.
func Load(path string) (*Authenticator, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("authn: %w", err)
	}
	var f TokensFile
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("authn: %s: %w", path, err)
	}
	a, err := New(f.Tokens)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return a, nil
}

// Authenticate returns the principal of a bearer token.
func (a *Authenticator) Authenticate(token string) (Principal, bool) {
	// Hashing first makes the map lookup independent of the secret's bytes.
	p, ok := a.byHash[sha256.Sum256([]byte(token))]
	return p, ok
}

type ctxKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// FromContext returns the caller of a gRPC method.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(ctxKey{}).(Principal)
	return p, ok
}

// Rules map a full gRPC method name ("/pkg.Service/Method") to the roles allowed to call it.
type Rules map[string][]Role

func (a *Authenticator) authorize(ctx context.Context, method string, rules Rules) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return nil, status.Error(codes.Unauthenticated, "missing authorization metadata: send 'authorization: Bearer <token>'")
	}
	token, ok := strings.CutPrefix(vals[0], "Bearer ")
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "authorization must be 'Bearer <token>'")
	}
	p, ok := a.Authenticate(token)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "unknown bearer token")
	}
	roles, ok := rules[method]
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "%s has no authorization rule", method)
	}
	if !p.Has(roles...) {
		return nil, status.Errorf(codes.PermissionDenied, "%s needs one of the roles %v; %s has %v", method, roles, p.Name, p.Roles)
	}
	return WithPrincipal(ctx, p), nil
}

// UnaryInterceptor authenticates and authorizes unary calls.
func (a *Authenticator) UnaryInterceptor(rules Rules) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := a.authorize(ctx, info.FullMethod, rules)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor authenticates and authorizes streaming calls.
func (a *Authenticator) StreamInterceptor(rules Rules) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := a.authorize(ss.Context(), info.FullMethod, rules)
		if err != nil {
			return err
		}
		return handler(srv, &wrapped{ServerStream: ss, ctx: ctx})
	}
}

type wrapped struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrapped) Context() context.Context { return w.ctx }

// BearerCredentials sends a token with each call (clients such as tenurectl).
type BearerCredentials struct {
	Token string
	// Insecure allows sending the token over plaintext (loopback dev only).
	Insecure bool
}

func (b BearerCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.Token}, nil
}
func (b BearerCredentials) RequireTransportSecurity() bool { return !b.Insecure }

// HashToken returns the hex SHA-256 of a token, for token_sha256 entries.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}
