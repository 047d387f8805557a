package report

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// docs/json.md lists every code, in Codes' and TraceCodes' order, and no
// other.
func TestDocsListEveryCode(t *testing.T) {
	doc, err := os.ReadFile("../../docs/json.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []struct {
		para  string
		codes []Code
	}{{"Finding codes:", Codes}, {"Causes only packets show:", TraceCodes}, {"Resolution codes:", DNSCodes}} {
		_, list, ok := strings.Cut(string(doc), l.para)
		if !ok {
			t.Fatalf("docs/json.md has no %q paragraph", l.para)
		}
		list, _, _ = strings.Cut(list, "\n\n")
		var documented []Code
		for _, m := range regexp.MustCompile("`([a-z0-9-]+)`").FindAllStringSubmatch(list, -1) {
			documented = append(documented, Code(m[1]))
		}
		if !slices.Equal(documented, l.codes) {
			t.Errorf("docs/json.md's %q lists %v,\nthe code has %v", l.para, documented, l.codes)
		}
	}
	seen := map[Code]bool{}
	for _, c := range slices.Concat(Codes, TraceCodes, DNSCodes) {
		if seen[c] {
			t.Errorf("%s twice in Codes and TraceCodes", c)
		}
		seen[c] = true
	}
}

// Every Code constant is in Codes.
func TestCodesHoldsEveryConstant(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "codes.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, sp := range g.Specs {
			v := sp.(*ast.ValueSpec)
			if id, ok := v.Type.(*ast.Ident); !ok || id.Name != "Code" {
				continue
			}
			code, _ := strconv.Unquote(v.Values[0].(*ast.BasicLit).Value)
			if !slices.Contains(slices.Concat(Codes, TraceCodes, DNSCodes), Code(code)) {
				t.Errorf("%s (%s) is in none of Codes, TraceCodes and DNSCodes", v.Names[0].Name, code)
			}
		}
	}
}
