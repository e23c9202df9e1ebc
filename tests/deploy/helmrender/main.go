// Command helmrender renders a Helm chart the way `helm template` does, for machines that
// have no helm binary: Go's text/template (the engine Helm uses), the sprig function
// library (the one Helm uses, from Debian's golang-github-masterminds-sprig-dev) and
// re-implementations of Helm's own additions (include, tpl, required, fail, toYaml,
// fromYaml, toJson, fromJson, lookup), with values parsed and merged as Helm does
// (sigs.k8s.io/yaml, so numbers are float64; later files win; null deletes a default).
//
// Not a Helm replacement: no subcharts, no values.schema.json, no .Files.Glob, `lookup`
// always finds nothing (as in `helm template`), `--set` takes one dotted key per flag
// (no lists, no commas). Build in GOPATH mode:
//
//	GO111MODULE=off GOPATH=$PWD/.gopath:/usr/share/gocode go build -o helmrender .
//
// Usage:
//
//	helmrender -chart deploy/helm/jitgate [-f extra.yaml]... [-set a.b=c]... \
//	    [-name jitgate] [-namespace ns] [-kube-version 1.30.0] [-notes] [-upgrade]
//
// Output: every rendered manifest document, each preceded by "---" and a
// "# Source: <chart>/templates/<file>" line, like `helm template`. Exit 1 on any error.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

// recursionMax bounds nested `include` calls of one template, as Helm does.
const recursionMax = 1000

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// Metadata mirrors Helm's chart.Metadata (the fields templates read as .Chart.X).
type Metadata struct {
	Name         string            `json:"name"`
	Home         string            `json:"home,omitempty"`
	Sources      []string          `json:"sources,omitempty"`
	Version      string            `json:"version"`
	Description  string            `json:"description,omitempty"`
	Keywords     []string          `json:"keywords,omitempty"`
	Maintainers  []interface{}     `json:"maintainers,omitempty"`
	Icon         string            `json:"icon,omitempty"`
	APIVersion   string            `json:"apiVersion"`
	Condition    string            `json:"condition,omitempty"`
	Tags         string            `json:"tags,omitempty"`
	AppVersion   string            `json:"appVersion,omitempty"`
	Deprecated   bool              `json:"deprecated,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	KubeVersion  string            `json:"kubeVersion,omitempty"`
	Dependencies []interface{}     `json:"dependencies,omitempty"`
	Type         string            `json:"type,omitempty"`
}

// KubeVersion mirrors chartutil.KubeVersion.
type KubeVersion struct {
	Version    string
	Major      string
	Minor      string
	GitVersion string
}

func (k KubeVersion) String() string { return k.Version }

// VersionSet mirrors chartutil.VersionSet (.Capabilities.APIVersions.Has).
type VersionSet []string

// Has reports whether the API version (or "group/version/Kind") is known.
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// Capabilities mirrors chartutil.Capabilities.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
	HelmVersion map[string]string
}

// Files is a minimal .Files: Get and GetBytes of files inside the chart folder.
type Files map[string][]byte

// Get returns a chart file's content, or "" when it does not exist (as Helm does).
func (f Files) Get(name string) string { return string(f[name]) }

// GetBytes returns a chart file's content as bytes.
func (f Files) GetBytes(name string) []byte { return f[name] }

// defaultAPIVersions: the built-in group versions a cluster of the supported range serves.
var defaultAPIVersions = []string{
	"v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1", "autoscaling/v1",
	"autoscaling/v2", "rbac.authorization.k8s.io/v1", "storage.k8s.io/v1",
	"apiextensions.k8s.io/v1", "admissionregistration.k8s.io/v1", "coordination.k8s.io/v1",
}

func main() {
	var valueFiles, sets, apiVersions multiFlag
	chartDir := flag.String("chart", "", "chart folder (with Chart.yaml)")
	name := flag.String("name", "release-name", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "1.30.0", "Kubernetes version for .Capabilities")
	notes := flag.Bool("notes", false, "also print the rendered NOTES.txt")
	upgrade := flag.Bool("upgrade", false, "render as an upgrade (.Release.IsUpgrade)")
	strict := flag.Bool("strict", false, "fail on a missing value key (helm lint --strict)")
	flag.Var(&valueFiles, "f", "values file, merged over the chart's (repeatable)")
	flag.Var(&sets, "set", "key.path=value override (repeatable)")
	flag.Var(&apiVersions, "api-versions", "extra API version for .Capabilities (repeatable)")
	flag.Parse()
	if *chartDir == "" {
		fail(errors.New("-chart is required"))
	}
	out, err := render(*chartDir, options{
		valueFiles: valueFiles, sets: sets, apiVersions: apiVersions, name: *name,
		namespace: *namespace, kubeVersion: *kubeVersion, notes: *notes, upgrade: *upgrade,
		strict: *strict,
	})
	if err != nil {
		fail(err)
	}
	os.Stdout.WriteString(out)
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "Error: %v\n", err)
	os.Exit(1)
}

type options struct {
	valueFiles, sets, apiVersions []string
	name, namespace, kubeVersion  string
	notes, upgrade, strict        bool
}

func render(chartDir string, opt options) (string, error) {
	meta, err := readChart(chartDir)
	if err != nil {
		return "", err
	}
	values, err := readValues(filepath.Join(chartDir, "values.yaml"), true)
	if err != nil {
		return "", err
	}
	overrides := map[string]interface{}{}
	for _, file := range opt.valueFiles {
		v, err := readValues(file, false)
		if err != nil {
			return "", err
		}
		overrides = mergeMaps(overrides, v)
	}
	for _, s := range opt.sets {
		if err := applySet(overrides, s); err != nil {
			return "", err
		}
	}
	values = coalesce(overrides, values)

	kv, err := parseKubeVersion(opt.kubeVersion)
	if err != nil {
		return "", err
	}
	files, err := readFiles(chartDir)
	if err != nil {
		return "", err
	}
	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": opt.name, "Namespace": opt.namespace, "Service": "Helm",
			"IsInstall": !opt.upgrade, "IsUpgrade": opt.upgrade, "Revision": 1,
		},
		"Chart": meta,
		"Capabilities": &Capabilities{
			KubeVersion: kv,
			APIVersions: append(VersionSet(defaultAPIVersions), opt.apiVersions...),
			HelmVersion: map[string]string{"Version": "v3-compatible (helmrender)"},
		},
		"Files": files,
	}

	// All templates (partials included) are parsed into one set, named
	// "<chart>/templates/<path>", so `include` and `define` work across files.
	templatesDir := filepath.Join(chartDir, "templates")
	var names []string
	t := template.New("gotpl")
	if opt.strict {
		t.Option("missingkey=error")
	} else {
		t.Option("missingkey=zero")
	}
	included := map[string]int{}
	t.Funcs(funcMap(t, included, opt.strict))
	err = filepath.WalkDir(templatesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(templatesDir, p)
		body, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		tname := path.Join(meta.Name, "templates", filepath.ToSlash(rel))
		if _, err := t.New(tname).Parse(string(body)); err != nil {
			return err
		}
		names = append(names, tname)
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(names)

	var out strings.Builder
	for _, tname := range names {
		base := path.Base(tname)
		isNotes := base == "NOTES.txt"
		ext := path.Ext(base)
		if strings.HasPrefix(base, "_") || (!isNotes && ext != ".yaml" && ext != ".yml") {
			continue
		}
		data := copyMap(top)
		data["Template"] = map[string]interface{}{
			"Name": tname, "BasePath": path.Join(meta.Name, "templates"),
		}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, tname, data); err != nil {
			return "", cleanupError(err)
		}
		rendered := strings.ReplaceAll(buf.String(), "<no value>", "")
		if isNotes {
			if opt.notes {
				out.WriteString("---\n# Source: " + tname + "\n" + rendered + "\n")
			}
			continue
		}
		docs, err := splitManifests(tname, rendered)
		if err != nil {
			return "", err
		}
		for _, doc := range docs {
			out.WriteString("---\n# Source: " + tname + "\n" + doc + "\n")
		}
	}
	return out.String(), nil
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// splitManifests splits one rendered file into YAML documents, drops empty ones and
// checks each parses into an object with apiVersion and kind (Helm refuses others).
func splitManifests(tname, rendered string) ([]string, error) {
	var docs []string
	for _, part := range docSep.Split(rendered, -1) {
		doc := strings.Trim(part, "\n")
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return nil, fmt.Errorf("YAML parse error on %s: %v\n%s", tname, err, doc)
		}
		if head.APIVersion == "" || head.Kind == "" {
			return nil, fmt.Errorf("%s: a manifest without apiVersion or kind:\n%s", tname, doc)
		}
		docs = append(docs, doc)
	}
	return docs, nil
}

func stripComments(doc string) string {
	var keep []string
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

func cleanupError(err error) error {
	return fmt.Errorf("template: %s", strings.TrimPrefix(err.Error(), "template: "))
}

func readChart(dir string) (*Metadata, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, err
	}
	var meta Metadata
	if err := yaml.UnmarshalStrict(raw, &meta); err != nil {
		return nil, fmt.Errorf("Chart.yaml: %v", err)
	}
	if meta.APIVersion != "v2" {
		return nil, fmt.Errorf("Chart.yaml: apiVersion must be v2, got %q", meta.APIVersion)
	}
	if meta.Name == "" || meta.Version == "" {
		return nil, errors.New("Chart.yaml: name and version are required")
	}
	if meta.Type != "" && meta.Type != "application" && meta.Type != "library" {
		return nil, fmt.Errorf("Chart.yaml: unknown type %q", meta.Type)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if filepath.Base(abs) != meta.Name {
		return nil, fmt.Errorf("chart folder %q must be named like the chart, %q", dir, meta.Name)
	}
	return &meta, nil
}

func readFiles(dir string) (Files, error) {
	files := Files{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel == "Chart.yaml" || rel == "values.yaml" || strings.HasPrefix(rel, "templates/") {
			return nil
		}
		body, err := os.ReadFile(p)
		files[rel] = body
		return err
	})
	return files, err
}

// readValues parses a values file as Helm does (sigs.k8s.io/yaml: YAML → JSON → Go).
func readValues(file string, allowEmpty bool) (map[string]interface{}, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	values := map[string]interface{}{}
	if err := yaml.Unmarshal(raw, &values); err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	if values == nil {
		if !allowEmpty {
			return nil, fmt.Errorf("%s: empty values file", file)
		}
		values = map[string]interface{}{}
	}
	return values, nil
}

// mergeMaps: b over a, maps merged deeply (Helm's mergeMaps for -f files).
func mergeMaps(a, b map[string]interface{}) map[string]interface{} {
	out := copyMap(a)
	for k, v := range b {
		if vm, ok := v.(map[string]interface{}); ok {
			if om, ok := out[k].(map[string]interface{}); ok {
				out[k] = mergeMaps(om, vm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// coalesce: user values over chart defaults; a user null deletes the default key
// (Helm's chartutil.CoalesceValues).
func coalesce(user, defaults map[string]interface{}) map[string]interface{} {
	out := copyMap(defaults)
	for k, v := range user {
		if v == nil {
			delete(out, k)
			continue
		}
		if vm, ok := v.(map[string]interface{}); ok {
			if dm, ok := out[k].(map[string]interface{}); ok {
				out[k] = coalesce(vm, dm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

func copyMap(m map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// applySet handles one `key.path=value` (Helm strvals typing: bools, int64, null).
func applySet(into map[string]interface{}, expr string) error {
	eq := strings.IndexByte(expr, '=')
	if eq <= 0 {
		return fmt.Errorf("-set %q: want key=value", expr)
	}
	keys := strings.Split(expr[:eq], ".")
	raw := expr[eq+1:]
	var value interface{} = raw
	switch {
	case raw == "true":
		value = true
	case raw == "false":
		value = false
	case raw == "null":
		value = nil
	default:
		if n, err := strconv.ParseInt(raw, 10, 64); err == nil && (raw == "0" || raw[0] != '0') {
			value = n
		}
	}
	node := into
	for _, k := range keys[:len(keys)-1] {
		next, ok := node[k].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			node[k] = next
		}
		node = next
	}
	node[keys[len(keys)-1]] = value
	return nil
}

func parseKubeVersion(v string) (KubeVersion, error) {
	m := regexp.MustCompile(`^v?(\d+)\.(\d+)\.(\d+)$`).FindStringSubmatch(v)
	if m == nil {
		return KubeVersion{}, fmt.Errorf("-kube-version %q: want MAJOR.MINOR.PATCH", v)
	}
	full := "v" + m[1] + "." + m[2] + "." + m[3]
	return KubeVersion{Version: full, Major: m[1], Minor: m[2], GitVersion: full}, nil
}

func warnWrap(msg string) string { return "execution error: " + msg }

// funcMap: sprig's text functions minus env/expandenv (Helm removes them) plus Helm's.
func funcMap(t *template.Template, included map[string]int, strict bool) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	f["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	f["mustToYaml"] = func(v interface{}) (string, error) {
		data, err := yaml.Marshal(v)
		return strings.TrimSuffix(string(data), "\n"), err
	}
	f["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["fromYamlArray"] = func(s string) []interface{} {
		var a []interface{}
		if err := yaml.Unmarshal([]byte(s), &a); err != nil {
			a = []interface{}{err.Error()}
		}
		return a
	}
	f["toJson"] = func(v interface{}) string {
		data, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(data)
	}
	f["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["fromJsonArray"] = func(s string) []interface{} {
		var a []interface{}
		if err := json.Unmarshal([]byte(s), &a); err != nil {
			a = []interface{}{err.Error()}
		}
		return a
	}
	f["required"] = func(warn string, val interface{}) (interface{}, error) {
		if val == nil {
			return val, errors.New(warnWrap(warn))
		}
		if s, ok := val.(string); ok && s == "" {
			return val, errors.New(warnWrap(warn))
		}
		return val, nil
	}
	f["fail"] = func(msg string) (string, error) { return "", errors.New(warnWrap(msg)) }
	f["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	f["include"] = includeFunc(t, included)
	f["tpl"] = tplFunc(t, included, strict)
	return f
}

func includeFunc(t *template.Template, included map[string]int) func(string, interface{}) (string, error) {
	return func(name string, data interface{}) (string, error) {
		if included[name] > recursionMax {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		included[name]++
		defer func() { included[name]-- }()
		var buf strings.Builder
		err := t.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
}

// tplFunc renders a string as a template with the chart's defines available, like
// Helm's tpl (a clone of the parent set, so a tpl string cannot redefine templates).
func tplFunc(parent *template.Template, included map[string]int, strict bool) func(string, interface{}) (string, error) {
	return func(text string, vals interface{}) (string, error) {
		t, err := parent.Clone()
		if err != nil {
			return "", err
		}
		if strict {
			t.Option("missingkey=error")
		} else {
			t.Option("missingkey=zero")
		}
		t.Funcs(template.FuncMap{
			"include": includeFunc(t, included),
			"tpl":     tplFunc(t, included, strict),
		})
		t, err = t.New(parent.Name()).Parse(text)
		if err != nil {
			return "", fmt.Errorf("cannot parse template %q: %v", text, err)
		}
		var buf strings.Builder
		if err := t.Execute(&buf, vals); err != nil {
			return "", fmt.Errorf("error during tpl function execution for %q: %v", text, err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
}
