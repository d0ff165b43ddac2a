/**
 * MCP for background tools: a toolset served as an MCP server with Tasks (`McpToolsetServer`), and
 * a remote MCP server's tools as tools of a toolset (`McpRemoteTools`, over an `McpConnection`).
 *
 * @since 0.1.0
 */
export * as McpConnection from "./McpConnection.ts"
export * as McpRemoteTools from "./McpRemoteTools.ts"
export * as McpToolsetServer from "./McpToolsetServer.ts"
export * as McpWire from "./McpWire.ts"
