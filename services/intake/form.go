package intake

import (
	"encoding/json"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// Form posts.
//
// Some HRIS offer "Form Post" (application/x-www-form-urlencoded) as well as JSON for their
// webhooks, nesting with brackets: data[employeeId]=67890&data[changedFields][0]=jobTitle.
// An adapter that implements FormAdapter accepts that encoding for its sources; formToJSON
// turns such a body into the JSON document it stands for, so the adapter decodes one shape.

// FormAdapter is an Adapter whose HRIS may post form-encoded bodies. The intake accepts
// application/x-www-form-urlencoded for its sources and sets Delivery.ContentType.
type FormAdapter interface {
	Adapter
	AcceptsForm()
}

const contentTypeForm = "application/x-www-form-urlencoded"

// maxFormDepth bounds the bracket nesting a form key may have.
const maxFormDepth = 8

// formToJSON converts a bracket-nested form body to JSON. Every value is a string; an object
// whose keys are exactly 0..n-1 becomes an array. A key given twice, a malformed key, or a key
// that is both a value and a parent is a 400 naming the key.
func formToJSON(body []byte) ([]byte, error) {
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, BadRequest("body", "the form body is not valid URL encoding: %v", err)
	}
	root := map[string]any{}
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if len(vals[k]) != 1 {
			return nil, BadRequest(clip(k), "form key %q is given %d times", clip(k), len(vals[k]))
		}
		path, err := formPath(k)
		if err != nil {
			return nil, err
		}
		node := root
		for i, p := range path {
			last := i == len(path)-1
			existing, ok := node[p]
			switch {
			case last && ok:
				return nil, BadRequest(clip(k), "form key %q is both a value and a parent", clip(k))
			case last:
				node[p] = vals[k][0]
			case !ok:
				child := map[string]any{}
				node[p] = child
				node = child
			default:
				child, isMap := existing.(map[string]any)
				if !isMap {
					return nil, BadRequest(clip(k), "form key %q is both a value and a parent", clip(k))
				}
				node = child
			}
		}
	}
	return json.Marshal(arrays(root))
}

// formPath splits a[b][c] into a, b, c.
func formPath(k string) ([]string, error) {
	bad := func() error { return BadRequest(clip(k), "form key %q is not of the form name[key][key]…", clip(k)) }
	name, rest, nested := strings.Cut(k, "[")
	if name == "" {
		return nil, bad()
	}
	path := []string{name}
	if !nested {
		return path, nil
	}
	rest = "[" + rest
	for rest != "" {
		if rest[0] != '[' {
			return nil, bad()
		}
		end := strings.IndexByte(rest, ']')
		if end < 1 {
			return nil, bad()
		}
		path = append(path, rest[1:end])
		rest = rest[end+1:]
		if len(path) > maxFormDepth {
			return nil, BadRequest(clip(k), "form key %q nests deeper than %d levels", clip(k), maxFormDepth)
		}
	}
	return path, nil
}

// arrays turns objects keyed 0..n-1 into arrays, depth first.
func arrays(v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	for k, c := range m {
		m[k] = arrays(c)
	}
	list := make([]any, len(m))
	for k, c := range m {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i >= len(m) || k != strconv.Itoa(i) {
			return m
		}
		list[i] = c
	}
	return list
}

// formOrJSON returns the JSON a delivery's body stands for.
func formOrJSON(d Delivery) ([]byte, error) {
	if d.ContentType != contentTypeForm {
		return d.Body, nil
	}
	return formToJSON(d.Body)
}
