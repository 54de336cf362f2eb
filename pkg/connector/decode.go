package connector

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// decodeStrict decodes n into v and rejects fields v's type does not have.
//
// yaml.v3 is strict only when decoding bytes (Decoder.KnownFields); yaml.Node.Decode is not.
// A connector's config is a node inside the connectors file, and re-encoding it to bytes would
// lose the line numbers operators need, so the unknown-field check walks the node against the
// Go type itself, following yaml.v3's field rules (tags, ",inline", "-", lowercased names,
// merge keys), and leaves values and type errors to Node.Decode.
func decodeStrict(n *yaml.Node, v any) error {
	if err := decodeNode(n, v); err != nil {
		var de *decodeError
		if errors.As(err, &de) {
			de.what = "config"
		}
		return err
	}
	return nil
}

func decodeNode(n *yaml.Node, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("connector: decode needs a non-nil pointer, got %T", v)
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		n = n.Content[0]
	}
	if n.Kind == 0 {
		// No document at all: leave v as is so the factory reports missing fields.
		return nil
	}
	var probs []problem
	unknownFields(n, rv.Type().Elem(), &probs, 0)
	if err := n.Decode(v); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return fmt.Errorf("config: %w", err)
		}
		for _, msg := range te.Errors {
			var line int
			if _, err := fmt.Sscanf(msg, "line %d:", &line); err == nil {
				msg = strings.TrimSpace(msg[strings.Index(msg, ":")+1:])
			}
			probs = append(probs, problem{line: line, msg: msg})
		}
	}
	if len(probs) == 0 {
		return nil
	}
	slices.SortStableFunc(probs, func(a, b problem) int { return a.line - b.line })
	return &decodeError{problems: probs}
}

type problem struct {
	line int
	msg  string
}

// decodeError lists everything wrong with a config at once, so an operator fixes it in one
// round.
type decodeError struct {
	what     string // what was decoded, to start the message with
	problems []problem
}

func (e *decodeError) Error() string {
	var b strings.Builder
	if e.what != "" {
		b.WriteString(e.what + ": ")
	}
	for i, p := range e.problems {
		if i > 0 {
			b.WriteString("; ")
		}
		if p.line > 0 {
			fmt.Fprintf(&b, "line %d: ", p.line)
		}
		b.WriteString(p.msg)
	}
	return b.String()
}

var (
	nodeType                = reflect.TypeFor[yaml.Node]()
	unmarshalerType         = reflect.TypeFor[yaml.Unmarshaler]()
	obsoleteUnmarshalerType = reflect.TypeFor[interface {
		UnmarshalYAML(func(any) error) error
	}]()
)

// decodesItself reports whether t takes over its own decoding; such types (Secret, for one)
// are responsible for their own strictness.
func decodesItself(t reflect.Type) bool {
	pt := reflect.PointerTo(t)
	return t.Implements(unmarshalerType) || pt.Implements(unmarshalerType) ||
		t.Implements(obsoleteUnmarshalerType) || pt.Implements(obsoleteUnmarshalerType)
}

// maxDepth bounds the walk: aliases can make a small document deep.
const maxDepth = 100

func unknownFields(n *yaml.Node, t reflect.Type, probs *[]problem, depth int) {
	if depth > maxDepth {
		return
	}
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer && !decodesItself(t) {
		t = t.Elem()
	}
	if t == nodeType || decodesItself(t) {
		return
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Map:
		if n.Kind != yaml.MappingNode {
			return
		}
		var fields map[string]reflect.Type
		open := t.Kind() == reflect.Map
		if !open {
			fields, open = structFields(t)
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if isMerge(k) {
				for _, m := range mergedMappings(v) {
					unknownFields(m, t, probs, depth+1)
				}
				continue
			}
			if t.Kind() == reflect.Map {
				unknownFields(v, t.Elem(), probs, depth+1)
				continue
			}
			ft, ok := fields[k.Value]
			if !ok {
				if !open {
					*probs = append(*probs, problem{line: k.Line, msg: fmt.Sprintf("unknown field %q", k.Value)})
				}
				continue
			}
			unknownFields(v, ft, probs, depth+1)
		}
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return
		}
		for _, e := range n.Content {
			unknownFields(e, t.Elem(), probs, depth+1)
		}
	}
}

func isMerge(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Value == "<<" && (n.Tag == "" || n.Tag == "!" || n.Tag == "!!merge" || n.Tag == "tag:yaml.org,2002:merge")
}

func mergedMappings(n *yaml.Node) []*yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.SequenceNode {
		return n.Content
	}
	return []*yaml.Node{n}
}

// structFields maps the YAML keys of struct type t to field types the way yaml.v3 does.
// open is true when an inline map or inline self-decoding struct accepts any key.
func structFields(t reflect.Type) (fields map[string]reflect.Type, open bool) {
	fields = map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if f.PkgPath != "" && !f.Anonymous {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "" && !strings.Contains(string(f.Tag), ":") {
			tag = string(f.Tag)
		}
		if tag == "-" {
			continue
		}
		name, flags, _ := strings.Cut(tag, ",")
		if slices.Contains(strings.Split(flags, ","), "inline") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			switch {
			case ft.Kind() == reflect.Map, decodesItself(ft):
				open = true
			case ft.Kind() == reflect.Struct:
				inner, innerOpen := structFields(ft)
				for k, v := range inner {
					fields[k] = v
				}
				open = open || innerOpen
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fields[name] = f.Type
	}
	return fields, open
}
