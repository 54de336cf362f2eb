package connector

import (
	"fmt"
	"strings"
	"sync"
)

// Catalog reads, from a connector's config alone (no secrets resolved, no call to the
// target), the entitlements a connector of its type defines: pgrole's and LDAP's groups,
// SCIM's groups' entitlement names. decode is the strict decoder a Factory gets. A policy
// that grants an entitlement the connector does not define can only fail at provisioning
// time, so the policy check (tenurectl policy check --connectors, and tenure's start)
// refuses it with a Catalog's answer.
type Catalog func(decode func(v any) error) ([]string, error)

var (
	catalogMu sync.RWMutex
	catalogs  = map[string]Catalog{}
)

// RegisterCatalog says how to read the entitlements of typeName's configs. Connector
// packages whose entitlements are fixed by their config call it from init, beside Register.
// A type without one accepts any entitlement name (a manual or webhook target, an
// out-of-process connector). It panics on an empty name, a nil func or a second call.
func RegisterCatalog(typeName string, f Catalog) {
	if strings.TrimSpace(typeName) == "" || strings.TrimSpace(typeName) != typeName {
		panic(fmt.Sprintf("connector: RegisterCatalog with type name %q", typeName))
	}
	if f == nil {
		panic(fmt.Sprintf("connector: RegisterCatalog %q with a nil func", typeName))
	}
	catalogMu.Lock()
	defer catalogMu.Unlock()
	if _, dup := catalogs[typeName]; dup {
		panic(fmt.Sprintf("connector: catalog of type %q registered twice", typeName))
	}
	catalogs[typeName] = f
}

// Entitlements returns the entitlements the entry's connector defines. known is false when
// its type keeps no catalog (any name is accepted). Errors name the file, line and entry.
func (c *Config) Entitlements() (names []string, known bool, err error) {
	catalogMu.RLock()
	f, ok := catalogs[c.Type]
	catalogMu.RUnlock()
	if !ok {
		return nil, false, nil
	}
	names, err = f(func(v any) error { return decodeStrict(&c.Config, v) })
	if err != nil {
		return nil, true, fmt.Errorf("%sconnector %q: %w", c.where(), c.Name, err)
	}
	return names, true, nil
}

// File is the connectors file the entry was read from ("" when parsed from bytes).
func (c *Config) File() string { return c.file }

// Line is the line of the entry in its file (0 when unknown).
func (c *Config) Line() int { return c.line }
