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

// docs/json.md lists every finding code, in Codes' order, and no other.
func TestDocsListEveryCode(t *testing.T) {
	doc, err := os.ReadFile("../../docs/json.md")
	if err != nil {
		t.Fatal(err)
	}
	_, list, ok := strings.Cut(string(doc), "Finding codes:")
	if !ok {
		t.Fatal(`docs/json.md has no "Finding codes:" paragraph`)
	}
	list, _, _ = strings.Cut(list, "\n\n")
	var documented []Code
	for _, m := range regexp.MustCompile("`([a-z0-9-]+)`").FindAllStringSubmatch(list, -1) {
		documented = append(documented, Code(m[1]))
	}
	if !slices.Equal(documented, Codes) {
		t.Errorf("docs/json.md lists %v,\nthe code has %v", documented, Codes)
	}
	seen := map[Code]bool{}
	for _, c := range Codes {
		if seen[c] {
			t.Errorf("%s twice in Codes", c)
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
			if !slices.Contains(Codes, Code(code)) {
				t.Errorf("%s (%s) is not in Codes", v.Names[0].Name, code)
			}
		}
	}
}
