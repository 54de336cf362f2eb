package connector

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// Factory opens a connector from its configuration. decode fills v (a pointer to the
// connector's config struct, fields tagged `yaml:"..."`) strictly: unknown fields and type
// mismatches are errors that name the field and line. A factory validates the decoded config,
// returns any decode error as is, and must not act on the target beyond what opening needs
// (creating a client or a lazy pool is fine; creating accounts or groups is not).
type Factory func(ctx context.Context, decode func(v any) error) (Connector, error)

// ErrUnknownType matches the error for a type name nobody registered.
var ErrUnknownType = errors.New("unknown connector type")

var (
	registryMu sync.RWMutex
	registry   = map[string]Factory{}
)

// Register makes a connector type available under typeName. Connector packages call it from
// init, so linking a package in is what enables its type. It panics on an empty name, a nil
// factory or a name registered twice: those are programming errors that must not start.
func Register(typeName string, f Factory) {
	if typeName == "" {
		panic("connector: Register with an empty type name")
	}
	if strings.TrimSpace(typeName) != typeName {
		panic(fmt.Sprintf("connector: Register type name %q has surrounding space", typeName))
	}
	if f == nil {
		panic(fmt.Sprintf("connector: Register %q with a nil factory", typeName))
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[typeName]; dup {
		panic(fmt.Sprintf("connector: type %q registered twice", typeName))
	}
	registry[typeName] = f
}

// unregister exists for tests of the registry itself.
func unregister(typeName string) {
	registryMu.Lock()
	defer registryMu.Unlock()
	delete(registry, typeName)
}

// Types returns the registered type names, sorted.
func Types() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for name := range registry {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

func lookup(typeName string) (Factory, error) {
	registryMu.RLock()
	f, ok := registry[typeName]
	registryMu.RUnlock()
	if ok {
		return f, nil
	}
	known := strings.Join(Types(), ", ")
	if known == "" {
		known = "none"
	}
	return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownType, typeName, known)
}

// Open opens a connector of the registered type typeName with config, a YAML or JSON
// document (JSON is YAML). An empty config decodes as no fields set.
func Open(ctx context.Context, typeName string, config []byte) (Connector, error) {
	f, err := lookup(typeName)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(config, &doc); err != nil {
		return nil, fmt.Errorf("connector type %q: config: %w", typeName, err)
	}
	return open(ctx, typeName, f, &doc)
}

func open(ctx context.Context, typeName string, f Factory, n *yaml.Node) (Connector, error) {
	c, err := f(ctx, func(v any) error { return decodeStrict(n, v) })
	if err != nil {
		return nil, fmt.Errorf("connector type %q: %w", typeName, err)
	}
	if c == nil {
		return nil, fmt.Errorf("connector type %q: factory returned no connector and no error", typeName)
	}
	return c, nil
}
