/**
 * Said once per `npm test`: whether the PostgreSQL tests run (they need TEST_PG_URL).
 */
export const setup = (): void => {
  const url = process.env.TEST_PG_URL
  if (url === undefined || url === "") {
    console.log(
      "PostgreSQL tests not run (TEST_PG_URL is not set). To run them: bash .ci/run, or " +
        `eval "$(scripts/pg-throwaway.sh start)" && TEST_PG_URL=$PG_URL npm test`
    )
  }
}
