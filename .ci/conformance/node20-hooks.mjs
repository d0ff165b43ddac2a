// Loader hook for node20-shim.mjs: drops `globSync` from the suite's `fs` import and defines it as a stub.
export async function load(url, context, nextLoad) {
  const result = await nextLoad(url, context)
  if (!url.includes("/@modelcontextprotocol/conformance/dist/") || result.source == null) return result
  const source = String(result.source).replace(
    /import\{([^}]*?)globSync as ([\w$]+),([^}]*)\}from"fs";/,
    (_, before, name, after) => `import{${before}${after}}from"fs";const ${name}=()=>{throw new Error("fs.globSync needs Node 22")};`
  )
  return { ...result, source }
}
