// What the model is told about arguments that do not match a tool's parameters.
//
// One line a problem, each naming what was expected, where, and what the model sent, in words a
// model acts on: `Expected number at ["n"], got the string "one"`. Effect's default formatter
// describes the codec rather than the parameter (a number's JSON codec also takes "Infinity",
// "-Infinity" and "NaN", so "one" read `Expected "Infinity" | "-Infinity" | "NaN"`) and never
// says what was sent; the model's own arguments are at hand here, so each line quotes them.
import type { Schema } from "effect"
import { SchemaAST, SchemaIssue } from "effect"

/** A problem with the arguments: where, and the line that tells the model. */
interface ArgumentProblem {
  readonly path: ReadonlyArray<PropertyKey>
  readonly line: string
}

const pathText = (path: ReadonlyArray<PropertyKey>): string =>
  path.length === 0 ? "the top level" : path.map((key) => `[${JSON.stringify(typeof key === "symbol" ? String(key) : key)}]`).join("")

/** The value at `path` of the model's arguments (`undefined` where there is none). */
const valueAt = (input: unknown, path: ReadonlyArray<PropertyKey>): unknown =>
  path.reduce<unknown>(
    (value, key) =>
      value !== null && typeof value === "object" && Object.hasOwn(value, key)
        ? (value as Record<PropertyKey, unknown>)[key]
        : undefined,
    input
  )

/** What the model sent, in words: `the string "one"`, `the number 1.5`, `an array of 2 items`. */
const sentText = (value: unknown): string => {
  if (value === undefined) return "nothing"
  if (value === null) return "null"
  if (typeof value === "string") return `the string ${JSON.stringify(truncate(value, 80))}`
  if (typeof value === "number") return `the number ${value}`
  if (typeof value === "boolean") return `the boolean ${value}`
  if (Array.isArray(value)) return `an array of ${value.length} item${value.length === 1 ? "" : "s"}`
  return "an object"
}

// The strings a number's JSON codec takes besides numbers: not something to ask a model for.
const nonFinite = new Set<unknown>(["Infinity", "-Infinity", "NaN"])

/** The members of a union, nested unions flattened, less the non-finite strings beside a number. */
const unionMembers = (ast: SchemaAST.AST): Array<SchemaAST.AST> => {
  const flat = (node: SchemaAST.AST): Array<SchemaAST.AST> => SchemaAST.isUnion(node) ? node.types.flatMap(flat) : [node]
  const members = flat(ast)
  const hasNumber = members.some((member) => member._tag === "Number")
  return members.filter((member) =>
    member._tag !== "Undefined" && !(hasNumber && SchemaAST.isLiteral(member) && nonFinite.has(member.literal))
  )
}

/**
 * What a schema takes, in words: `string`, `one of "economy", "business"`, `string or null`,
 * `number (an integer, a value between 1 and 9)`.
 */
const expectedText = (ast: SchemaAST.AST): string => {
  const base = typeText(ast)
  // JSON has no infinite number: "finite" tells the model nothing
  const checks = (ast.checks ?? []).flatMap(checkExpectations).filter((check) => !(base === "number" && check === finiteText))
  return checks.length === 0 ? base : `${base} (${checks.join(", ")})`
}

const typeText = (ast: SchemaAST.AST): string => {
  switch (ast._tag) {
    case "String":
      return "string"
    case "Number":
      return "number"
    case "Boolean":
      return "boolean (true or false)"
    case "Null":
      return "null"
    case "Literal":
      return JSON.stringify(ast.literal)
    case "Enum":
      return `one of ${ast.enums.map(([, value]) => JSON.stringify(value)).join(", ")}`
    case "Arrays":
      return "array"
    case "Objects":
      return "object"
    case "Union": {
      const members = unionMembers(ast)
      if (members.length === 1) return expectedText(members[0]!)
      const literals = members.filter(SchemaAST.isLiteral)
      const others = members.filter((member) => !SchemaAST.isLiteral(member) && member._tag !== "Null")
      const words = [
        ...(literals.length === 0 ? [] : [
          literals.length === 1
            ? JSON.stringify(literals[0]!.literal)
            : `one of ${literals.map((literal) => JSON.stringify(literal.literal)).join(", ")}`
        ]),
        ...others.map(expectedText),
        ...(members.some((member) => member._tag === "Null") ? ["null"] : [])
      ]
      return words.join(" or ")
    }
    default:
      return SchemaIssue.defaultLeafHook(new SchemaIssue.InvalidType(ast)).replace(/^Expected /, "")
  }
}

const finiteText = "a finite number"

// Checks whose filter has no `expected` text (the OpenAI codec drops it for these, so they add no
// description to the JSON Schema): without these the model would read "Expected <filter>".
const knownChecks: Record<string, string> = {
  "effect/schema/isInt": "an integer",
  "effect/schema/isFinite": finiteText
}

/** What a check asks for, if it says. */
const checkExpected = (annotations: Schema.Annotations.Filter | undefined): string | undefined => {
  const expected = annotations?.expected
  if (typeof expected === "string") return expected
  const id = annotations?.representation?.id
  return typeof id === "string" ? knownChecks[id] : undefined
}

const checkExpectations = (check: SchemaAST.Check<unknown>): Array<string> => {
  if (check._tag === "FilterGroup") return check.checks.flatMap(checkExpectations)
  const expected = checkExpected(check.annotations)
  return expected === undefined ? [] : [expected]
}

/** What a failed check asked for: its own message if it has one, else `Expected <what it checks>`. */
const checkText = (issue: SchemaIssue.Filter): string =>
  SchemaIssue.defaultCheckHook(issue) ?? `Expected ${checkExpected(issue.filter.annotations) ?? "a valid value"}`

/** The names an object schema takes, for the model that sent another. */
const allowedKeys = (ast: SchemaAST.AST | undefined): string =>
  ast !== undefined && SchemaAST.isObjects(ast) && ast.propertySignatures.length > 0
    ? `the parameters are ${ast.propertySignatures.map((p) => JSON.stringify(String(p.name))).join(", ")}`
    : "this tool takes no parameters"

/** The problems an issue holds, each with its path; `parent` is the object schema around a key. */
const argumentProblems = (
  issue: SchemaIssue.Issue,
  input: unknown,
  path: ReadonlyArray<PropertyKey>,
  parent: SchemaAST.AST | undefined
): Array<ArgumentProblem> => {
  const at = pathText(path)
  const got = () => sentText(valueAt(input, path))
  switch (issue._tag) {
    case "Pointer":
      return argumentProblems(issue.issue, input, [...path, ...issue.path], parent)
    case "Composite":
      return issue.issues.flatMap((inner) => argumentProblems(inner, input, path, SchemaAST.isObjects(issue.ast) ? issue.ast : parent))
    case "Encoding":
      return argumentProblems(issue.issue, input, path, parent)
    case "Filter":
      return [{ path, line: `${checkText(issue)} at ${at}, got ${got()}` }]
    case "MissingKey": {
      const key = path.at(-1)
      const field = parent !== undefined && SchemaAST.isObjects(parent)
        ? parent.propertySignatures.find((p) => p.name === key)
        : undefined
      const wanted = field === undefined ? "" : `: expected ${expectedText(field.type)}`
      return [{ path, line: `Missing key ${JSON.stringify(String(key))} at ${at}${wanted}` }]
    }
    case "UnexpectedKey":
      return [{
        path,
        line: `Unexpected key ${JSON.stringify(String(path.at(-1)))} at ${at}: ${allowedKeys(issue.ast)}; leave it out`
      }]
    case "AnyOf": {
      // A member the value matched in type, but not inside (an object with a wrong field): say
      // what is wrong inside. Otherwise no member fits: say what the union takes as a whole.
      const inside = issue.issues.filter((inner) => inner._tag !== "AnyOf" && inner._tag !== "InvalidType")
      return inside.length > 0
        ? inside.flatMap((inner) => argumentProblems(inner, input, path, parent))
        : [{ path, line: `Expected ${expectedText(issue.ast)} at ${at}, got ${got()}` }]
    }
    case "InvalidType":
      return [{ path, line: `Expected ${expectedText(issue.ast)} at ${at}, got ${got()}` }]
    case "InvalidValue":
    case "OneOf":
    case "Forbidden":
      return [{ path, line: `${SchemaIssue.defaultLeafHook(issue)} at ${at}, got ${got()}` }]
  }
}

/** The lines that tell the model what is wrong with its arguments, one a problem. */
export const formatIssue = (issue: SchemaIssue.Issue, input: unknown): string =>
  argumentProblems(issue, input, [], undefined).map((problem) => problem.line).join("\n")

export const truncate = (s: string, max: number): string => s.length <= max ? s : `${s.slice(0, max)}…`
