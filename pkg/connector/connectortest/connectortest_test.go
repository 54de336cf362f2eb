package connectortest_test

import (
	"errors"
	"testing"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
)

func TestMemoryConforms(t *testing.T) {
	connectortest.Run(t, connectortest.Harness{
		New: func(t *testing.T) connector.Connector {
			m := connectortest.NewMemory("read", "write")
			m.PageSize = 2
			return m
		},
		Features: connectortest.Features{
			Create: true, Disable: true, Enable: true, Delete: true,
			Entitlements: true, Sessions: true, List: true, Credentials: true, Profile: true,
		},
		Entitlements: []string{"read", "write"},
		Credentials: &connectortest.CredentialProbe{
			Give: func(t *testing.T, c connector.Connector, acc connector.Account) {
				if err := c.(*connectortest.Memory).SetCredential(connector.AccountRef{ID: acc.ID}, "s3cret"); err != nil {
					t.Fatal(err)
				}
			},
			Works: func(t *testing.T, c connector.Connector, acc connector.Account) bool {
				return c.(*connectortest.Memory).Authenticate(connector.AccountRef{ID: acc.ID}, "s3cret")
			},
		},
	})
}

// readOnly hides every capability but GetAccount, like a connector for a target tenure may
// only read.
type readOnly struct{ connector.Connector }

func TestReadOnlyConnectorRunsOnlyDeclaredCapabilities(t *testing.T) {
	connectortest.Run(t, connectortest.Harness{
		New: func(t *testing.T) connector.Connector {
			return readOnly{connectortest.NewMemory()}
		},
	})
}

func TestMemorySessions(t *testing.T) {
	m := connectortest.NewMemory()
	ctx := t.Context()
	acc, err := m.CreateAccount(ctx, connector.AccountSpec{Username: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	ref := connector.AccountRef{ID: acc.ID}
	for range 2 {
		if err := m.Login(ref); err != nil {
			t.Fatal(err)
		}
	}
	if n := m.Sessions(ref); n != 2 {
		t.Fatalf("Sessions = %d", n)
	}
	if err := m.DisableAccount(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if n := m.Sessions(ref); n != 0 {
		t.Errorf("Sessions after disable = %d", n)
	}
	if err := m.Login(ref); err == nil {
		t.Error("a disabled account logged in")
	}
}

func TestMemoryInject(t *testing.T) {
	m := connectortest.NewMemory()
	boom := connector.Retryable(errors.New("503"))
	m.Inject = func(op string, ref connector.AccountRef) error {
		if op == connector.CapDisable {
			return boom
		}
		return nil
	}
	acc, err := m.CreateAccount(t.Context(), connector.AccountSpec{Username: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.DisableAccount(t.Context(), connector.AccountRef{ID: acc.ID}); !errors.Is(err, boom) {
		t.Fatalf("DisableAccount = %v, want the injected error", err)
	}
}
