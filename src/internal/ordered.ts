/** Inserts `item` after every item created at or before it. Appending (the usual case) is O(1). */
export const insertSorted = <A extends { readonly createdAt: number }>(items: Array<A>, item: A): void => {
  const last = items[items.length - 1]
  if (last === undefined || last.createdAt <= item.createdAt) {
    items.push(item)
    return
  }
  let lo = 0
  let hi = items.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (items[mid]!.createdAt <= item.createdAt) lo = mid + 1
    else hi = mid
  }
  items.splice(lo, 0, item)
}
